//! The model store: where a model's files are found and how its labels are read.
//!
//! A model is either a folder in the store holding its model file (`.onnx`, or TorchScript `.pt`/`.pth`; at most one
//! of each format, so that one model can ship both) and, optionally, TorchServe's `index_to_name.json`, or a bare
//! model file (whose classes are then named by their index), or a TorchServe model archive ([`crate::archive`]: a
//! `.mar` file or a no-archive folder), whose manifest names the model file. Which format runs is the server's
//! choice.

use std::path::{Path, PathBuf};

use crate::archive::{self, Manifest, Unpacked};

/// A model that cannot be found or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing usable at that path.
    #[error("model \"{name}\": {message}")]
    NotFound {
        /// Model name.
        name: String,
        /// What was looked for.
        message: String,
    },
    /// A model archive that cannot be used: not a zip, an unsafe entry, a missing or malformed manifest, or a
    /// serialized file that is missing or of a format ferroserve does not run.
    #[error("model \"{name}\": {message}")]
    Archive {
        /// Model name.
        name: String,
        /// What is wrong with the archive.
        message: String,
    },
    /// `index_to_name.json` is unreadable or malformed.
    #[error("{path}: {message}")]
    Labels {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// How a model file is serialized, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ModelFormat {
    /// `.onnx`, run by ONNX Runtime.
    Onnx,
    /// `.pt` or `.pth` written by `torch.jit.save`, run by libtorch.
    TorchScript,
}

impl ModelFormat {
    /// The format of a file, by its extension.
    #[must_use]
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str())? {
            "onnx" => Some(Self::Onnx),
            "pt" | "pth" => Some(Self::TorchScript),
            _ => None,
        }
    }

    /// The runtime that runs the format, as [`crate::BackendFactory::runtime`] names it.
    #[must_use]
    pub const fn runtime(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::TorchScript => "torchscript",
        }
    }
}

/// The files of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// Model name.
    pub name: String,
    /// The serialized model: one file per format it ships in, sorted by format (ONNX first); never empty, except
    /// for an archive whose handler runs in Python (`python`).
    pub models: Vec<(ModelFormat, PathBuf)>,
    /// Class labels by index, when the model ships `index_to_name.json`.
    pub labels: Option<Vec<String>>,
    /// The manifest, when the model is a TorchServe archive.
    pub manifest: Option<Manifest>,
    /// The archive's `model-config.yaml`, when its manifest names one (`configFile`).
    pub config: Option<PathBuf>,
    /// Where a `.mar` was unpacked: keep it (or a clone) as long as the model's files are used.
    pub unpacked: Option<Unpacked>,
    /// The archive's root folder when its handler runs in TorchServe's Python worker ([`runs_python_handler`]);
    /// `models` may then be empty (an eager model's state dict is the handler's business).
    pub python: Option<PathBuf>,
}

impl ModelFiles {
    /// The files of a model that is not an archive: its model files and labels.
    fn plain(name: &str, models: Vec<(ModelFormat, PathBuf)>, labels: Option<Vec<String>>) -> Self {
        Self { name: name.to_string(), models, labels, manifest: None, config: None, unpacked: None, python: None }
    }

    /// The model's file in `format`, if it ships one.
    #[must_use]
    pub fn model(&self, format: ModelFormat) -> Option<&Path> {
        self.models.iter().find(|(f, _)| *f == format).map(|(_, p)| p.as_path())
    }
}

/// What the store says it looks for.
const MODEL_FILES: &str = ".onnx, .pt, .pth or a .mar or .tar.gz archive";

fn is_model_file(path: &Path) -> bool {
    path.is_file() && ModelFormat::of(path).is_some()
}

/// Finds model `name` at `entry` (a folder or file, relative to `store` unless absolute).
///
/// # Errors
/// [`StoreError`] when the entry does not exist, a folder does not hold exactly one model file, or its labels
/// are malformed.
pub fn locate(store: &Path, name: &str, entry: &str) -> Result<ModelFiles, StoreError> {
    let path = store.join(entry);
    let not_found = |message: String| StoreError::NotFound { name: name.to_string(), message };
    confine(store, &path).map_err(not_found)?;
    let files = locate_unchecked(store, name, entry)?;
    // An unpacked archive's files are in its own folder, which `archive::unpack` confines; a folder's model and
    // config files may be links, which must not lead out of the store.
    if files.unpacked.is_none() {
        for file in files.models.iter().map(|(_, model)| model).chain(&files.config) {
            confine(store, file).map_err(not_found)?;
        }
    }
    Ok(files)
}

/// The manifest of the archive at `entry` (a `.mar` file or a no-archive folder), read without unpacking it;
/// `None` for any other entry, or an archive whose manifest cannot be read (loading it then says why).
#[must_use]
pub fn peek_manifest(store: &Path, entry: &str) -> Option<Manifest> {
    let path = store.join(entry);
    confine(store, &path).ok()?;
    let is_archive = (path.is_file() && archive::is_archive_file(&path)) || archive::is_archive_folder(&path);
    is_archive.then(|| archive::read_manifest(&path).ok()).flatten()
}

/// The files of the archive whose root folder is `root` (a no-archive folder, or where a `.mar` was unpacked).
fn archive_files(root: &Path, name: &str, unpacked: Option<Unpacked>) -> Result<ModelFiles, StoreError> {
    let bad = |message: String| StoreError::Archive { name: name.to_string(), message };
    let manifest = archive::read_manifest(root).map_err(bad)?;
    if runs_python_handler(&manifest) {
        return python_archive_files(root, name, manifest, unpacked);
    }
    let model = archive::serialized_file(root, &manifest).map_err(bad)?;
    let file = model.strip_prefix(root).unwrap_or(&model).display().to_string();
    let format = ModelFormat::of(&model)
        .ok_or_else(|| bad(format!("its serializedFile {file} is not .onnx, .pt or .pth: ferroserve cannot run it")))?;
    if !model.is_file() {
        return Err(bad(format!("the archive has no {file}, the serializedFile of its manifest")));
    }
    let config = archive::config_file(root, &manifest).map_err(bad)?;
    if let Some(config) = config.as_ref().filter(|c| !c.is_file()) {
        let file = config.strip_prefix(root).unwrap_or(config).display().to_string();
        return Err(bad(format!("the archive has no {file}, the configFile of its manifest")));
    }
    let labels = labels_in(root)?;
    let models = vec![(format, model)];
    Ok(ModelFiles { name: name.to_string(), models, labels, manifest: Some(manifest), config, unpacked, python: None })
}

/// TorchServe's built-in handlers (`ts/torch_handler/*.py`): an archive naming one of them with an ONNX or
/// TorchScript model is served by ferroserve's own handlers, natively.
pub const BUILTIN_HANDLERS: &[&str] = &[
    "base_handler",
    "image_classifier",
    "image_segmenter",
    "object_detector",
    "text_classifier",
    "text_handler",
    "vision_handler",
    "densenet_handler",
];

/// Whether an archive's handler runs in TorchServe's Python worker: a handler of its own (`handler.py`,
/// `module:function`, any name that is not built in), or a built-in handler whose model ferroserve cannot run
/// natively (an eager model, `modelFile`; a serialized file that is not ONNX or TorchScript; none). An archive
/// without a handler is served natively, as before.
#[must_use]
pub fn runs_python_handler(manifest: &Manifest) -> bool {
    let Some(handler) = manifest.handler.as_deref() else {
        return false;
    };
    let native = manifest.model_file.is_none()
        && manifest.serialized_file.as_deref().is_some_and(|f| ModelFormat::of(Path::new(f)).is_some());
    !(BUILTIN_HANDLERS.contains(&handler) && native)
}

/// The files of an archive whose handler runs in Python: its folder, its `model-config.yaml` and labels, and
/// nothing else: the model file is the handler's to load.
fn python_archive_files(
    root: &Path,
    name: &str,
    manifest: Manifest,
    unpacked: Option<Unpacked>,
) -> Result<ModelFiles, StoreError> {
    let bad = |message: String| StoreError::Archive { name: name.to_string(), message };
    let config = archive::config_file(root, &manifest).map_err(bad)?;
    if let Some(config) = config.as_ref().filter(|c| !c.is_file()) {
        let file = config.strip_prefix(root).unwrap_or(config).display().to_string();
        return Err(bad(format!("the archive has no {file}, the configFile of its manifest")));
    }
    // Its index_to_name.json is the handler's to read, in whatever form the handler reads it.
    Ok(ModelFiles {
        name: name.to_string(),
        models: Vec::new(),
        labels: None,
        manifest: Some(manifest),
        config,
        unpacked,
        python: Some(root.to_path_buf()),
    })
}

/// Refuses a path that resolves outside the store (through `..` or a symbolic link).
fn confine(store: &Path, path: &Path) -> Result<(), String> {
    let (Ok(store), Ok(resolved)) = (store.canonicalize(), path.canonicalize()) else {
        return Ok(()); // A path that does not exist is reported as such by the caller.
    };
    if resolved.starts_with(&store) {
        Ok(())
    } else {
        Err(format!("{} resolves outside the model store", path.display()))
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

fn locate_unchecked(store: &Path, name: &str, entry: &str) -> Result<ModelFiles, StoreError> {
    let path = store.join(entry);
    let not_found = |message: String| StoreError::NotFound { name: name.to_string(), message };
    if let Some(format) = ModelFormat::of(&path).filter(|_| path.is_file()) {
        // A file inside a model folder (`signnet/signnet.pt`, to pick one format) keeps the folder's labels.
        let folder = path.parent().filter(|dir| !same_dir(dir, store));
        let labels = folder.map(labels_in).transpose()?.flatten();
        return Ok(ModelFiles::plain(name, vec![(format, path)], labels));
    }
    if path.is_file() && archive::is_archive_file(&path) {
        let unpacked = archive::unpack(&path).map_err(|message| StoreError::Archive { name: name.into(), message })?;
        let root = unpacked.path().to_path_buf();
        return archive_files(&root, name, Some(unpacked));
    }
    if archive::is_archive_folder(&path) {
        return archive_files(&path, name, None);
    }
    if !path.is_dir() {
        return Err(not_found(format!(
            "{} is neither a model folder nor a model file ({MODEL_FILES})",
            path.display()
        )));
    }
    let read = std::fs::read_dir(&path).map_err(|e| not_found(format!("{}: {e}", path.display())))?;
    let mut models: Vec<(ModelFormat, PathBuf)> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter_map(|p| Some((ModelFormat::of(&p)?, p)))
        .collect();
    models.sort();
    if models.is_empty() {
        return Err(not_found(format!("{} holds no model file ({MODEL_FILES})", path.display())));
    }
    if let Some(pair) = models.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        let (a, b) = (pair[0].1.display(), pair[1].1.display());
        return Err(not_found(format!("{} holds {a} and {b} in one format; keep one", path.display())));
    }
    let labels = labels_in(&path)?;
    Ok(ModelFiles::plain(name, models, labels))
}

/// Every model in the store (for `load_models=all`): `(name, entry)` pairs sorted by name.
///
/// # Errors
/// [`StoreError::NotFound`] when the store cannot be listed.
pub fn list(store: &Path) -> Result<Vec<(String, String)>, StoreError> {
    let read = std::fs::read_dir(store).map_err(|e| StoreError::NotFound {
        name: "*".into(),
        message: format!("model store {}: {e}", store.display()),
    })?;
    let mut found = Vec::new();
    for entry in read.filter_map(Result::ok) {
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()).map(str::to_string) else {
            continue;
        };
        let name = file.split_once('.').map_or(file.as_str(), |(stem, _)| stem).to_string();
        let archive = path.is_file() && archive::is_archive_file(&path);
        if is_model_file(&path) || archive || (path.is_dir() && locate(store, &name, &file).is_ok()) {
            found.push((name, file));
        }
    }
    found.sort();
    Ok(found)
}

/// The labels of the model folder `dir`: its `index_to_name.json` when it has one.
fn labels_in(dir: &Path) -> Result<Option<Vec<String>>, StoreError> {
    let path = dir.join("index_to_name.json");
    path.is_file().then(|| read_labels(&path)).transpose()
}

/// Reads TorchServe's `index_to_name.json`: `{"0": "hello", ...}`, where a value may also be a list whose last
/// string is the label (`["n01440764", "tench"]`). Indices must run from 0 without gaps.
///
/// # Errors
/// [`StoreError::Labels`] when the file is unreadable or not of that form.
pub fn read_labels(path: &Path) -> Result<Vec<String>, StoreError> {
    let fail = |message: String| StoreError::Labels { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let map: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| fail(format!("not a JSON object of labels: {e}")))?;
    let mut labels = vec![None; map.len()];
    for (key, value) in map {
        let index: usize = key.parse().map_err(|_| fail(format!("key `{key}` is not an index")))?;
        let label = match &value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(items) => items.last().and_then(|v| v.as_str()).map(str::to_string),
            _ => None,
        };
        let slot = labels.get_mut(index).ok_or_else(|| fail(format!("index {index} leaves a gap")))?;
        *slot = Some(label.ok_or_else(|| fail(format!("label of `{key}` is not a string")))?);
    }
    Ok(labels.into_iter().map(|l| l.unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled_store() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn manifest(handler: Option<&str>, serialized: Option<&str>, model_file: Option<&str>) -> Manifest {
        Manifest {
            model_name: "m".into(),
            model_version: None,
            serialized_file: serialized.map(Into::into),
            handler: handler.map(Into::into),
            model_file: model_file.map(Into::into),
            config_file: None,
            requirements_file: None,
        }
    }

    #[test]
    fn custom_handlers_and_models_only_python_can_run_go_to_the_python_worker() {
        let native = [
            manifest(None, Some("m.onnx"), None),
            manifest(Some("image_classifier"), Some("m.pt"), None),
            manifest(Some("base_handler"), Some("m.onnx"), None),
            // No handler: served natively, and refused there when it cannot be.
            manifest(None, Some("m.pt"), Some("model.py")),
        ];
        for m in &native {
            assert!(!runs_python_handler(m), "{m:?}");
        }
        let python = [
            manifest(Some("handler.py"), Some("m.onnx"), None),
            manifest(Some("handler:handle"), Some("m.pt"), None),
            manifest(Some("my_module"), None, None),
            manifest(Some("image_classifier"), Some("m.pt"), Some("model.py")),
            manifest(Some("text_classifier"), Some("m.bin"), None),
            manifest(Some("base_handler"), None, None),
        ];
        for m in &python {
            assert!(runs_python_handler(m), "{m:?}");
        }
    }

    #[test]
    fn finds_the_bundled_model_and_its_labels() {
        let files = locate(&bundled_store(), "signnet", "signnet").expect("bundled model");
        assert!(files.model(ModelFormat::Onnx).expect("ONNX").ends_with("signnet/signnet.onnx"));
        assert!(files.model(ModelFormat::TorchScript).expect("TorchScript").ends_with("signnet/signnet.pt"));
        let labels = files.labels.expect("labels");
        assert_eq!(labels.len(), 10);
        assert_eq!(labels[0], "hello");
        assert_eq!(list(&bundled_store()).expect("list"), vec![("signnet".to_string(), "signnet".to_string())]);
    }

    #[cfg(unix)]
    #[test]
    fn links_out_of_the_store_are_refused() {
        let root = std::env::temp_dir().join(format!("fs-confine-{}", std::process::id()));
        let (store, outside) = (root.join("store"), root.join("outside"));
        std::fs::create_dir_all(&store).expect("store");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::copy(bundled_store().join("signnet/signnet.onnx"), outside.join("m.onnx")).expect("copy");
        std::os::unix::fs::symlink(&outside, store.join("evil")).expect("link");
        std::os::unix::fs::symlink(outside.join("m.onnx"), store.join("evil.onnx")).expect("link");
        // A no-archive folder whose model-config.yaml is a link out of the store.
        let folder = store.join("linked-config");
        std::fs::create_dir_all(folder.join("MAR-INF")).expect("folder");
        std::fs::copy(bundled_store().join("signnet/signnet.onnx"), folder.join("m.onnx")).expect("copy");
        std::fs::write(outside.join("secret.yaml"), "batchSize: 1\n").expect("write");
        std::os::unix::fs::symlink(outside.join("secret.yaml"), folder.join("model-config.yaml")).expect("link");
        let manifest =
            r#"{"model": {"modelName": "m", "serializedFile": "m.onnx", "configFile": "model-config.yaml"}}"#;
        std::fs::write(folder.join(archive::MANIFEST), manifest).expect("manifest");
        for entry in ["evil", "evil.onnx", "../outside/m.onnx", "linked-config"] {
            let err = locate(&store, "evil", entry).expect_err(entry);
            assert!(err.to_string().contains("outside the model store"), "{entry}: {err}");
        }
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn torchscript_files_are_models_one_per_format() {
        let store = std::env::temp_dir().join(format!("fs-formats-{}", std::process::id()));
        let folder = store.join("m");
        std::fs::create_dir_all(&folder).expect("folder");
        for file in ["m/m.onnx", "m/m.pt", "m/m.pt.json", "bare.pth"] {
            std::fs::write(store.join(file), b"x").expect("write");
        }
        let files = locate(&store, "m", "m").expect("both formats");
        let formats: Vec<_> = files.models.iter().map(|(f, _)| *f).collect();
        assert_eq!(formats, [ModelFormat::Onnx, ModelFormat::TorchScript]);
        let bare = locate(&store, "bare", "bare.pth").expect("a bare .pth");
        assert_eq!(bare.model(ModelFormat::TorchScript), Some(store.join("bare.pth").as_path()));
        std::fs::write(store.join("index_to_name.json"), r#"{"0": "store-wide"}"#).expect("write");
        std::fs::write(folder.join("index_to_name.json"), r#"{"0": "m's"}"#).expect("write");
        assert_eq!(locate(&store, "bare", "bare.pth").expect("bare").labels, None, "labels belong to folders");
        let picked = locate(&store, "m", "m/m.pt").expect("one format of a folder");
        assert_eq!((picked.models.len(), picked.labels), (1, Some(vec!["m's".to_string()])));
        assert_eq!(
            list(&store).expect("list"),
            [("bare".to_string(), "bare.pth".to_string()), ("m".into(), "m".into())]
        );
        std::fs::write(folder.join("other.pth"), b"x").expect("write");
        let err = locate(&store, "m", "m").expect_err("two TorchScript files");
        assert!(err.to_string().contains("in one format; keep one"), "{err}");
        std::fs::remove_dir_all(&store).ok();
    }

    #[test]
    fn missing_models_are_named() {
        let err = locate(&bundled_store(), "nope", "nope").expect_err("missing");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn labels_accept_torchserve_forms_and_refuse_gaps() {
        let dir = std::env::temp_dir().join(format!("fs-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("index_to_name.json");
        std::fs::write(&path, r#"{"1": ["n1", "tench"], "0": "hello"}"#).expect("write");
        assert_eq!(read_labels(&path).expect("labels"), vec!["hello", "tench"]);
        std::fs::write(&path, r#"{"0": "a", "2": "c"}"#).expect("write");
        assert!(read_labels(&path).is_err());
        std::fs::write(&path, "[1, 2]").expect("write");
        assert!(read_labels(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
