//! TorchServe's model archives: a `.mar` file (a zip written by `torch-model-archiver`) or the folder that
//! `torch-model-archiver --archive-format no-archive` writes. Both hold `MAR-INF/MANIFEST.json`, which names the
//! model, its version and its serialized file, beside the files given with `--extra-files`
//! (`index_to_name.json`, and for TorchScript the `<file>.json` that gives its input shape).
//!
//! A `.mar` is unpacked into a private temporary folder (owner-only) that lives as long as the model: only regular
//! files and folders are written, each inside that folder (no `..`, no absolute paths, no symbolic links), and the
//! archive may not unpack to more than [`MAX_UNPACKED`] bytes.

use std::{
    fs::File,
    io::{Read, Write},
    path::{Component, Path, PathBuf},
    sync::Arc,
};

/// Where the manifest is, in an archive and in a no-archive folder.
pub const MANIFEST: &str = "MAR-INF/MANIFEST.json";

/// The most bytes a `.mar` may unpack to (a guard against zip bombs; models larger than this are served from a
/// folder).
pub const MAX_UNPACKED: u64 = 16 << 30;

/// The manifest fields ferroserve reads. The Python `handler` is never run: ferroserve answers with its own
/// handlers (landmarks, KServe v2 tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `model.modelName`.
    pub model_name: String,
    /// `model.modelVersion`, when the archive has one.
    pub model_version: Option<String>,
    /// `model.serializedFile`: the model file, relative to the archive's root.
    pub serialized_file: Option<String>,
    /// `model.handler`.
    pub handler: Option<String>,
    /// `model.modelFile`: the Python class of an eager-mode model.
    pub model_file: Option<String>,
    /// `model.configFile`: the model's `model-config.yaml` (`torch-model-archiver -c`), relative to the root.
    pub config_file: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    model: RawModel,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawModel {
    model_name: String,
    model_version: Option<String>,
    serialized_file: Option<String>,
    handler: Option<String>,
    model_file: Option<String>,
    config_file: Option<String>,
}

impl Manifest {
    /// Parses `MANIFEST.json`.
    ///
    /// # Errors
    /// A message when it is not JSON or has no `model.modelName`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawManifest = serde_json::from_str(text).map_err(|e| format!("{MANIFEST}: {e}"))?;
        let m = raw.model;
        Ok(Self {
            model_name: m.model_name,
            model_version: m.model_version,
            serialized_file: m.serialized_file.filter(|f| !f.is_empty()),
            handler: m.handler.filter(|h| !h.is_empty()),
            model_file: m.model_file.filter(|f| !f.is_empty()),
            config_file: m.config_file.filter(|f| !f.is_empty()),
        })
    }
}

/// The start of the name of every folder a `.mar` is unpacked into, followed by the process id and `-`.
const PREFIX: &str = "ferroserve-mar-";

/// Removes the folders that servers no longer running left in `temp` (the system's temporary folder): a server
/// that was killed, or exited on a second signal, did not remove what it unpacked. A server holds an exclusive
/// lock (`flock`) on each folder it unpacked for as long as it uses it, and the kernel drops the lock when the
/// process ends, however it ends; a folder is removed only when its lock can be taken, which holds across
/// containers that share the folder. Returns how many were removed. Unix only; elsewhere it removes nothing.
pub fn sweep_stale(temp: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX));
        if !ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(lock) = lock_folder(&entry.path()) else {
            continue; // In use by a running server (or not lockable here).
        };
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
        drop(lock);
    }
    removed
}

/// Takes the exclusive lock of folder `dir` without waiting: `None` when another open handle holds it.
#[cfg(unix)]
fn lock_folder(dir: &Path) -> Option<File> {
    let handle = File::open(dir).ok()?;
    handle.try_lock().ok()?;
    Some(handle)
}

#[cfg(not(unix))]
fn lock_folder(_dir: &Path) -> Option<File> {
    None
}

/// Whether `path` names a model archive file (`.mar`).
#[must_use]
pub fn is_archive_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "mar")
}

/// Whether `dir` is a no-archive folder (it holds `MAR-INF/MANIFEST.json`).
#[must_use]
pub fn is_archive_folder(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// The manifest of the archive at `path` (a `.mar` file or a no-archive folder), read without unpacking.
///
/// # Errors
/// A message when the archive or its manifest cannot be read.
pub fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let text = if path.is_dir() {
        std::fs::read_to_string(path.join(MANIFEST)).map_err(|e| format!("{}: {e}", path.join(MANIFEST).display()))?
    } else {
        let mut zip = open(path)?;
        let mut entry = zip.by_name(MANIFEST).map_err(|e| format!("{}: no {MANIFEST} ({e})", path.display()))?;
        let mut text = String::new();
        entry.by_ref().take(1 << 20).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
        text
    };
    Manifest::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn open(path: &Path) -> Result<zip::ZipArchive<File>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    zip::ZipArchive::new(file).map_err(|e| format!("{}: not a model archive (zip): {e}", path.display()))
}

/// A `.mar` unpacked into a temporary folder, removed when the last clone is dropped. The folder is locked while
/// it lives (see [`sweep_stale`]).
#[derive(Debug, Clone)]
pub struct Unpacked(Arc<(tempfile::TempDir, Option<File>)>);

impl Unpacked {
    /// The folder the archive was unpacked into.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.0 .0.path()
    }
}

impl PartialEq for Unpacked {
    fn eq(&self, other: &Self) -> bool {
        self.path() == other.path()
    }
}

impl Eq for Unpacked {}

/// Unpacks the `.mar` at `path` into a new owner-only temporary folder.
///
/// # Errors
/// A message when the file is not a zip, when an entry would land outside the folder or is a symbolic link, or
/// when the archive unpacks to more than [`MAX_UNPACKED`] bytes.
pub fn unpack(path: &Path) -> Result<Unpacked, String> {
    unpack_within(path, MAX_UNPACKED)
}

fn unpack_within(path: &Path, limit: u64) -> Result<Unpacked, String> {
    let fail = |message: String| format!("{}: {message}", path.display());
    let mut zip = open(path)?;
    let mut builder = tempfile::Builder::new();
    let prefix = format!("{PREFIX}{}-", std::process::id());
    builder.prefix(&prefix);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let dir = builder.tempdir().map_err(|e| fail(e.to_string()))?;
    // Locked before anything is written, so that a sweep never takes a folder being filled.
    let lock = lock_folder(dir.path());
    let mut budget = limit;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(|e| fail(e.to_string()))?;
        let name = entry.name().map_or_else(|_| format!("#{index}"), |n| n.to_string());
        let relative = entry
            .enclosed_name()
            .filter(|p| p.components().all(|c| matches!(c, Component::Normal(_))))
            .ok_or_else(|| fail(format!("entry {name:?} would unpack outside the archive's folder")))?;
        if entry.is_symlink() {
            return Err(fail(format!("entry {name:?} is a symbolic link; archives may hold files only")));
        }
        let target = dir.path().join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| fail(format!("{name}: {e}")))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("{name}: {e}")))?;
        }
        let mut out = File::create(&target).map_err(|e| fail(format!("{name}: {e}")))?;
        // Counted as written, whatever the entry declares: the declared size of a crafted entry can lie.
        let written =
            std::io::copy(&mut entry.by_ref().take(budget + 1), &mut out).map_err(|e| fail(format!("{name}: {e}")))?;
        out.flush().map_err(|e| fail(format!("{name}: {e}")))?;
        budget = budget
            .checked_sub(written)
            .ok_or_else(|| fail(format!("the archive unpacks to more than {limit} bytes")))?;
    }
    Ok(Unpacked(Arc::new((dir, lock))))
}

/// The serialized file the manifest names, inside `root`.
///
/// # Errors
/// A message when the manifest names none (a handler-only or eager-mode archive) or a path leaving `root`.
pub fn serialized_file(root: &Path, manifest: &Manifest) -> Result<PathBuf, String> {
    let Some(file) = &manifest.serialized_file else {
        let why = if manifest.model_file.is_some() { " (an eager-mode model needs its Python class)" } else { "" };
        return Err(format!(
            "the archive names no serializedFile{why}: ferroserve serves ONNX (.onnx) and TorchScript (.pt, .pth) \
             files, packed with torch-model-archiver --serialized-file"
        ));
    };
    inside(root, file, "serializedFile")
}

/// The `model-config.yaml` the manifest names (`configFile`), inside `root`, if it names one.
///
/// # Errors
/// A message when the path leaves `root`.
pub fn config_file(root: &Path, manifest: &Manifest) -> Result<Option<PathBuf>, String> {
    manifest.config_file.as_deref().map(|file| inside(root, file, "configFile")).transpose()
}

/// `file`, a path the manifest gives as `field`, under `root`: refused when it would leave it.
fn inside(root: &Path, file: &str, field: &str) -> Result<PathBuf, String> {
    let relative = Path::new(file);
    if !relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("{field} {file:?} leaves the archive"));
    }
    Ok(root.join(relative))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use zip::{write::SimpleFileOptions, ZipWriter};

    use super::*;

    const MANIFEST_JSON: &str = r#"{"createdOn": "29/11/2026 08:36:41", "runtime": "python",
        "model": {"modelName": "signnet", "serializedFile": "signnet.onnx", "handler": "base_handler",
        "modelVersion": "1.0"}, "archiverVersion": "0.12.0"}"#;

    fn write_zip(path: &Path, build: impl FnOnce(&mut ZipWriter<Cursor<Vec<u8>>>)) {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        build(&mut zip);
        std::fs::write(path, zip.finish().expect("zip").into_inner()).expect("write");
    }

    fn add(zip: &mut ZipWriter<Cursor<Vec<u8>>>, name: &str, data: &[u8]) {
        zip.start_file(name, SimpleFileOptions::default()).expect("entry");
        zip.write_all(data).expect("data");
    }

    #[test]
    fn the_archivers_manifest_parses() {
        let m = Manifest::parse(MANIFEST_JSON).expect("manifest");
        assert_eq!(m.model_name, "signnet");
        assert_eq!(m.model_version.as_deref(), Some("1.0"));
        assert_eq!(m.serialized_file.as_deref(), Some("signnet.onnx"));
        assert_eq!(m.handler.as_deref(), Some("base_handler"));
        assert!(Manifest::parse(r#"{"model": {}}"#).expect_err("no name").contains("modelName"));
        assert!(Manifest::parse("[]").is_err());
    }

    #[test]
    fn an_archive_unpacks_into_a_private_folder_removed_with_the_last_handle() {
        let dir = tempfile::tempdir().expect("dir");
        let mar = dir.path().join("m.mar");
        write_zip(&mar, |z| {
            add(z, MANIFEST, MANIFEST_JSON.as_bytes());
            add(z, "signnet.onnx", b"model bytes");
            add(z, "extra/notes.txt", b"kept");
        });
        assert_eq!(read_manifest(&mar).expect("manifest").model_name, "signnet");
        let unpacked = unpack(&mar).expect("unpacks");
        let root = unpacked.path().to_path_buf();
        #[cfg(unix)]
        assert!(lock_folder(&root).is_none(), "a folder in use is locked");
        assert_eq!(std::fs::read(root.join("signnet.onnx")).expect("model"), b"model bytes");
        assert_eq!(std::fs::read(root.join("extra/notes.txt")).expect("extra"), b"kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&root).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the owner reads the unpacked model: {mode:o}");
        }
        let manifest = read_manifest(&root).expect("the unpacked folder is a no-archive folder");
        assert_eq!(serialized_file(&root, &manifest).expect("file"), root.join("signnet.onnx"));
        let clone = unpacked.clone();
        drop(unpacked);
        assert!(root.exists(), "a clone keeps it");
        drop(clone);
        assert!(!root.exists(), "removed with the last handle");
    }

    #[cfg(unix)]
    #[test]
    fn only_folders_no_server_holds_are_swept() {
        let temp = tempfile::tempdir().expect("dir");
        let left = temp.path().join(format!("{PREFIX}4999999-abc"));
        let held = temp.path().join(format!("{PREFIX}{}-def", std::process::id()));
        let other = temp.path().join("someone-elses");
        for dir in [&left, &held, &other] {
            std::fs::create_dir_all(dir.join("inside")).expect("dir");
        }
        let lock = lock_folder(&held).expect("a free folder can be locked");
        assert_eq!(sweep_stale(temp.path()), 1);
        assert!(!left.exists() && held.exists() && other.exists());
        drop(lock);
        assert_eq!(sweep_stale(temp.path()), 1, "once its lock is dropped, the folder is stale");
        assert!(!held.exists());
        assert_eq!(sweep_stale(&temp.path().join("missing")), 0);
    }

    #[test]
    fn escaping_entries_links_and_bombs_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mar = dir.path().join("evil.mar");
        for bad in ["../outside.txt", "a/../../b"] {
            write_zip(&mar, |z| add(z, bad, b"x"));
            let err = unpack(&mar).expect_err(bad);
            assert!(err.contains("outside the archive"), "{bad}: {err}");
        }
        // An absolute name is taken relative to the archive's folder, as unzip does.
        write_zip(&mar, |z| add(z, "/tmp/ferroserve-absolute-entry", b"x"));
        let inside = unpack(&mar).expect("an absolute name lands inside");
        assert!(inside.path().join("tmp/ferroserve-absolute-entry").is_file());
        assert!(!Path::new("/tmp/ferroserve-absolute-entry").exists());
        write_zip(&mar, |z| {
            z.add_symlink("link", "/etc/passwd", SimpleFileOptions::default()).expect("link");
        });
        assert!(unpack(&mar).expect_err("a link").contains("symbolic link"));
        write_zip(&mar, |z| {
            add(z, "a.bin", &[0; 6]);
            add(z, "b.bin", &[0; 6]);
        });
        assert!(unpack_within(&mar, 12).is_ok());
        assert!(unpack_within(&mar, 11).expect_err("a bomb").contains("more than 11 bytes"));
        std::fs::write(&mar, b"not a zip").expect("write");
        assert!(unpack(&mar).expect_err("not a zip").contains("not a model archive"));
        assert!(read_manifest(&mar).is_err());
        let manifest =
            Manifest { serialized_file: Some("../x.onnx".into()), ..Manifest::parse(MANIFEST_JSON).expect("m") };
        assert!(serialized_file(dir.path(), &manifest).expect_err("escapes").contains("leaves the archive"));
        let eager = Manifest { serialized_file: None, model_file: Some("model.py".into()), ..manifest.clone() };
        assert!(serialized_file(dir.path(), &eager).expect_err("eager").contains("eager-mode"));
        let config = Manifest { config_file: Some("/etc/model-config.yaml".into()), ..manifest };
        assert!(config_file(dir.path(), &config).expect_err("escapes").contains("configFile"));
    }
}
