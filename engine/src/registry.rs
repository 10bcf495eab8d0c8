//! Models by name and version, with a default version per name (TorchServe's model registry).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, PoisonError, RwLock},
};

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
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        let versions = models.entry(model.name().to_string()).or_default();
        if versions.by_version.contains_key(model.version()) {
            return Err(Box::new(model));
        }
        if versions.by_version.is_empty() {
            versions.default = model.version().to_string();
        }
        let model = Arc::new(model);
        versions
            .by_version
            .insert(model.version().to_string(), Arc::clone(&model));
        Ok(model)
    }

    /// The model `name` at `version`, or at its default version.
    #[must_use]
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<Arc<Model>> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        let versions = models.get(name)?;
        versions
            .by_version
            .get(version.unwrap_or(&versions.default))
            .cloned()
    }

    /// Every model, every version, sorted by name then version.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<Model>> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = models
            .values()
            .flat_map(|v| v.by_version.values().cloned())
            .collect();
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
