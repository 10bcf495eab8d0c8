//! Models by name and version, with a default version per name (TorchServe's model registry).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::RwLock;

use crate::model::Model;

/// The versions of one model name.
#[derive(Default)]
struct Versions {
    default: String,
    by_version: BTreeMap<String, Arc<Model>>,
}

/// Every loaded model.
#[derive(Default)]
pub struct Registry {
    models: RwLock<HashMap<String, Versions>>,
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a model; the first version of a name becomes its default.
    ///
    /// # Errors
    /// Gives the model back when that name and version is registered already.
    pub fn register(&self, model: Model) -> Result<Arc<Model>, Box<Model>> {
        let mut models = self.models.write();
        let versions = models.entry(model.name().to_string()).or_default();
        if versions.by_version.contains_key(model.version()) {
            return Err(Box::new(model));
        }
        if versions.by_version.is_empty() {
            versions.default = model.version().to_string();
        }
        let model = Arc::new(model);
        versions.by_version.insert(model.version().to_string(), Arc::clone(&model));
        Ok(model)
    }

    /// The model `name` at `version`, or at its default version.
    #[must_use]
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<Arc<Model>> {
        let models = self.models.read();
        let versions = models.get(name)?;
        versions.by_version.get(version.unwrap_or(&versions.default)).cloned()
    }

    /// Every version of `name`, sorted, with the default one's version.
    #[must_use]
    pub fn versions(&self, name: &str) -> Option<(Vec<Arc<Model>>, String)> {
        let models = self.models.read();
        let versions = models.get(name)?;
        Some((versions.by_version.values().cloned().collect(), versions.default.clone()))
    }

    /// The default version of every model name, sorted by name.
    #[must_use]
    pub fn defaults(&self) -> Vec<Arc<Model>> {
        let models = self.models.read();
        let mut all: Vec<_> = models.values().filter_map(|v| v.by_version.get(&v.default).cloned()).collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Takes model `name` at `version` (or its default) out of the registry, so that no new request reaches it;
    /// the caller closes and drains it. When the default version goes, the highest remaining one becomes default.
    #[must_use]
    pub fn remove(&self, name: &str, version: Option<&str>) -> Option<Arc<Model>> {
        let mut models = self.models.write();
        let versions = models.get_mut(name)?;
        let version = version.map_or_else(|| versions.default.clone(), str::to_string);
        let model = versions.by_version.remove(&version)?;
        match versions.by_version.keys().next_back() {
            None => {
                models.remove(name);
            }
            Some(highest) if versions.default == version => versions.default = highest.clone(),
            Some(_) => {}
        }
        Some(model)
    }

    /// Makes `version` the default of `name`; false when there is no such version.
    pub fn set_default(&self, name: &str, version: &str) -> bool {
        let mut models = self.models.write();
        match models.get_mut(name) {
            Some(versions) if versions.by_version.contains_key(version) => {
                versions.default = version.to_string();
                true
            }
            _ => false,
        }
    }

    /// Every model, every version, sorted by name then version.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<Model>> {
        let models = self.models.read();
        let mut all: Vec<_> = models.values().flat_map(|v| v.by_version.values().cloned()).collect();
        all.sort_by(|a, b| (a.name(), a.version()).cmp(&(b.name(), b.version())));
        all
    }

    /// Closes every model, lets queued requests finish, and joins the workers (blocking).
    pub fn shutdown(&self) {
        let all = self.all();
        for model in &all {
            model.close();
        }
        for model in &all {
            model.shutdown();
        }
    }
}
