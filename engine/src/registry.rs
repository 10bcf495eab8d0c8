//! Models by name and version, with a default version per name (TorchServe's model registry) and, per name, at
//! most one canary version that takes a share of the requests naming no version ([`crate::canary`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::RwLock;

use crate::{canary::Weight, model::Model};

/// The versions of one model name.
#[derive(Default)]
struct Versions {
    default: String,
    by_version: BTreeMap<String, Arc<Model>>,
    canary: Option<Canary>,
}

/// A model's canary: a version other than the default, and its share of the requests that name no version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    /// The canary version.
    pub version: String,
    /// Its share ([`Weight::ZERO`] after a rollback: it stays the canary, and gets nothing).
    pub weight: Weight,
}

/// The model a request naming no version reached.
#[derive(Clone)]
pub struct Routed {
    /// The version that answers.
    pub model: Arc<Model>,
    /// Whether the split sent it to the canary.
    pub canary: bool,
}

/// Why a canary cannot be set or promoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanaryError {
    /// No model of that name.
    #[error("Model not found: {0}")]
    NoModel(String),
    /// The model has no such version.
    #[error("Model version: {version} does not exist for model: {name}")]
    NoVersion {
        /// Model name.
        name: String,
        /// The version asked for.
        version: String,
    },
    /// The default version cannot be its own canary.
    #[error("Version {version} is the default version of model {name}: a canary must be another version")]
    IsDefault {
        /// Model name.
        name: String,
        /// The default version.
        version: String,
    },
    /// Promotion of a version that is not the model's canary.
    #[error("Version {version} is not the canary of model {name}")]
    NotCanary {
        /// Model name.
        name: String,
        /// The version asked for.
        version: String,
    },
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

    /// The model a request to `name` that names no version reaches, the request falling in `bucket`
    /// ([`crate::canary::bucket`]): the canary when its weight takes the bucket and it can serve
    /// ([`Model::can_serve`]), else the default version.
    #[must_use]
    pub fn route(&self, name: &str, bucket: u32) -> Option<Routed> {
        let models = self.models.read();
        let versions = models.get(name)?;
        let canary = versions.canary.as_ref().filter(|c| c.weight.takes(bucket));
        if let Some(model) = canary.and_then(|c| versions.by_version.get(&c.version)).filter(|m| m.can_serve()) {
            return Some(Routed { model: Arc::clone(model), canary: true });
        }
        let model = Arc::clone(versions.by_version.get(&versions.default)?);
        Some(Routed { model, canary: false })
    }

    /// The canary of `name`, if it has one.
    #[must_use]
    pub fn canary(&self, name: &str) -> Option<Canary> {
        self.models.read().get(name)?.canary.clone()
    }

    /// Makes `version` the canary of `name` with `weight` (replacing any other canary).
    ///
    /// # Errors
    /// [`CanaryError`] when there is no such model or version, or it is the default version.
    pub fn set_canary(&self, name: &str, version: &str, weight: Weight) -> Result<(), CanaryError> {
        let mut models = self.models.write();
        let versions = models.get_mut(name).ok_or_else(|| CanaryError::NoModel(name.to_string()))?;
        let (name, version) = (name.to_string(), version.to_string());
        if !versions.by_version.contains_key(&version) {
            return Err(CanaryError::NoVersion { name, version });
        }
        if versions.default == version {
            return Err(CanaryError::IsDefault { name, version });
        }
        versions.canary = Some(Canary { version, weight });
        Ok(())
    }

    /// Ends the canary of `name`: every request naming no version goes to the default again. Returns the
    /// canary there was.
    pub fn clear_canary(&self, name: &str) -> Option<Canary> {
        self.models.write().get_mut(name)?.canary.take()
    }

    /// Makes the canary `version` of `name` its default version, ending the split.
    ///
    /// # Errors
    /// [`CanaryError`] when there is no such model, or `version` is not its canary.
    pub fn promote(&self, name: &str, version: &str) -> Result<(), CanaryError> {
        let mut models = self.models.write();
        let versions = models.get_mut(name).ok_or_else(|| CanaryError::NoModel(name.to_string()))?;
        if versions.canary.as_ref().is_none_or(|c| c.version != version) {
            return Err(CanaryError::NotCanary { name: name.to_string(), version: version.to_string() });
        }
        versions.canary = None;
        versions.default = version.to_string();
        Ok(())
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
                return Some(model);
            }
            Some(highest) if versions.default == version => versions.default = highest.clone(),
            Some(_) => {}
        }
        // A canary that went, or that became the default, splits nothing any more.
        if versions.canary.as_ref().is_some_and(|c| c.version == version || c.version == versions.default) {
            versions.canary = None;
        }
        Some(model)
    }

    /// Makes `version` the default of `name`; false when there is no such version. When `version` was the
    /// canary, this promotes it: the split ends.
    pub fn set_default(&self, name: &str, version: &str) -> bool {
        let mut models = self.models.write();
        match models.get_mut(name) {
            Some(versions) if versions.by_version.contains_key(version) => {
                versions.default = version.to_string();
                if versions.canary.as_ref().is_some_and(|c| c.version == version) {
                    versions.canary = None;
                }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        backend::FakeBackend,
        canary::{bucket, BUCKETS},
        BatchPolicy, ModelOptions,
    };

    /// Version `version` of the fake model `m` with `workers` workers.
    fn model(version: &str, workers: usize) -> Model {
        let options = ModelOptions {
            name: "m".into(),
            version: version.into(),
            workers,
            queue_size: 4,
            policy: BatchPolicy { max_batch_size: 1, max_delay: Duration::ZERO },
            response_timeout: Duration::from_secs(5),
        };
        Model::start(&FakeBackend::scalar(), options).expect("the fake starts")
    }

    fn two_versions() -> Registry {
        let registry = Registry::new();
        for version in ["1.0", "2.0"] {
            assert!(registry.register(model(version, 1)).is_ok());
        }
        registry
    }

    fn percent(p: f64) -> Weight {
        Weight::from_percent(p).expect("a percentage")
    }

    /// The version every bucket reaches.
    fn versions_by_bucket(registry: &Registry) -> Vec<String> {
        (0..BUCKETS).map(|b| registry.route("m", b).expect("routed").model.version().to_string()).collect()
    }

    #[test]
    fn the_canary_takes_the_buckets_below_its_weight() {
        let registry = two_versions();
        assert!(versions_by_bucket(&registry).iter().all(|v| v == "1.0"), "no canary, no split");
        registry.set_canary("m", "2.0", percent(10.0)).expect("a canary");
        let routed = versions_by_bucket(&registry);
        assert_eq!(routed.iter().filter(|v| *v == "2.0").count(), 1000);
        assert!(routed[..1000].iter().all(|v| v == "2.0") && routed[1000..].iter().all(|v| v == "1.0"));
        assert!(registry.route("m", 0).expect("routed").canary);
        assert!(!registry.route("m", 1000).expect("routed").canary);
        let key = bucket("m", b"user-7");
        let first = registry.route("m", key).expect("routed").model.version().to_string();
        assert!((0..100).all(|_| registry.route("m", key).expect("routed").model.version() == first), "sticky");
        assert!(registry.get("m", None).is_some_and(|m| m.version() == "1.0"), "the default is unchanged");
    }

    #[test]
    fn a_canary_without_a_live_worker_gets_nothing() {
        let registry = Registry::new();
        assert!(registry.register(model("1.0", 1)).is_ok());
        assert!(registry.register(model("2.0", 0)).is_ok());
        registry.set_canary("m", "2.0", Weight::FULL).expect("a canary");
        assert!(versions_by_bucket(&registry).iter().all(|v| v == "1.0"));
    }

    #[test]
    fn set_canary_checks_the_version_and_promotion_ends_the_split() {
        let registry = two_versions();
        let w = percent(5.0);
        assert_eq!(registry.set_canary("x", "2.0", w), Err(CanaryError::NoModel("x".into())));
        assert!(matches!(registry.set_canary("m", "3.0", w), Err(CanaryError::NoVersion { .. })));
        assert!(matches!(registry.set_canary("m", "1.0", w), Err(CanaryError::IsDefault { .. })));
        assert!(matches!(registry.promote("m", "2.0"), Err(CanaryError::NotCanary { .. })));
        registry.set_canary("m", "2.0", w).expect("a canary");
        assert_eq!(registry.canary("m"), Some(Canary { version: "2.0".into(), weight: w }));
        registry.promote("m", "2.0").expect("promoted");
        assert_eq!(registry.canary("m"), None);
        assert_eq!(registry.get("m", None).expect("default").version(), "2.0");
        assert!(versions_by_bucket(&registry).iter().all(|v| v == "2.0"));
    }

    #[test]
    fn removing_the_canary_or_making_it_default_ends_the_split() {
        let registry = two_versions();
        registry.set_canary("m", "2.0", percent(50.0)).expect("a canary");
        assert!(registry.set_default("m", "2.0"));
        assert_eq!(registry.canary("m"), None, "set-default on the canary promotes it");
        registry.set_canary("m", "1.0", percent(50.0)).expect("the old default as canary");
        assert!(registry.remove("m", Some("1.0")).is_some());
        assert_eq!(registry.canary("m"), None);
        assert!(versions_by_bucket(&registry).iter().all(|v| v == "2.0"));
        assert_eq!(registry.clear_canary("m"), None);
        registry.shutdown();
    }
}
