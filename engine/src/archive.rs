//! TorchServe's model archives: a `.mar` file (a zip written by `torch-model-archiver`), a `.tar.gz` (its
//! `--archive-format tgz`, the files under a folder named after the model) or the folder that
//! `--archive-format no-archive` writes. All hold `MAR-INF/MANIFEST.json`, which names the
//! model, its version and its serialized file, beside the files given with `--extra-files`
//! (`index_to_name.json`, and for TorchScript, optionally, the `<file>.json` that declares its tensors).
//!
//! An archive file is unpacked into a private temporary folder (owner-only) that lives as long as the model:
//! only regular files and folders are written, each inside that folder (no `..`, no symbolic links), and the
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

/// The manifest fields ferroserve reads (`model.*`; an empty string counts as absent). The Python `handler` is
/// never run: ferroserve answers with its own handlers (landmarks, KServe v2 tensors).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `model.modelName`.
    pub model_name: String,
    /// `model.modelVersion`, when the archive has one.
    #[serde(default, deserialize_with = "non_empty")]
    pub model_version: Option<String>,
    /// `model.serializedFile`: the model file, relative to the archive's root.
    #[serde(default, deserialize_with = "non_empty")]
    pub serialized_file: Option<String>,
    /// `model.handler`.
    #[serde(default, deserialize_with = "non_empty")]
    pub handler: Option<String>,
    /// `model.modelFile`: the Python class of an eager-mode model.
    #[serde(default, deserialize_with = "non_empty")]
    pub model_file: Option<String>,
    /// `model.configFile`: the model's `model-config.yaml` (`torch-model-archiver -c`), relative to the root.
    #[serde(default, deserialize_with = "non_empty")]
    pub config_file: Option<String>,
    /// `model.requirementsFile`: the handler's Python dependencies (`torch-model-archiver --requirements-file`),
    /// installed only with `install_py_dep_per_model=true`.
    #[serde(default, deserialize_with = "non_empty")]
    pub requirements_file: Option<String>,
}

/// An optional string, `None` when it is empty (the archiver writes `""` for what it was not given).
fn non_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value: Option<String> = serde::Deserialize::deserialize(deserializer)?;
    Ok(value.filter(|v| !v.is_empty()))
}

impl Manifest {
    /// Parses `MANIFEST.json`.
    ///
    /// # Errors
    /// A message when it is not JSON or has no `model.modelName`.
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct File {
            model: Manifest,
        }
        serde_json::from_str::<File>(text).map(|file| file.model).map_err(|e| format!("{MANIFEST}: {e}"))
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

/// How an archive file is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    /// `.mar`: a zip (the archiver's default and `zip-store` formats).
    Zip,
    /// `.tar.gz` or `.tgz` (`--archive-format tgz`): the files under one folder named after the model.
    TarGz,
}

fn packing(path: &Path) -> Option<Packing> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".mar") {
        Some(Packing::Zip)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(Packing::TarGz)
    } else {
        None
    }
}

/// Whether `path` names a model archive file: `.mar`, or `.tar.gz` / `.tgz`.
#[must_use]
pub fn is_archive_file(path: &Path) -> bool {
    packing(path).is_some()
}

/// Whether `dir` is a no-archive folder (it holds `MAR-INF/MANIFEST.json`).
#[must_use]
pub fn is_archive_folder(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// The most bytes of a manifest read.
const MAX_MANIFEST: u64 = 1 << 20;

/// The manifest of the archive at `path` (an archive file or a no-archive folder), read without unpacking.
///
/// # Errors
/// A message when the archive or its manifest cannot be read.
pub fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let fail = |message: String| format!("{}: {message}", path.display());
    let mut text = String::new();
    match packing(path).filter(|_| path.is_file()) {
        None => {
            let file =
                File::open(path.join(MANIFEST)).map_err(|e| format!("{}: {e}", path.join(MANIFEST).display()))?;
            file.take(MAX_MANIFEST).read_to_string(&mut text).map_err(|e| fail(e.to_string()))?;
        }
        Some(Packing::Zip) => {
            let mut zip = open_zip(path)?;
            let entry = zip.by_name(MANIFEST).map_err(|e| fail(format!("no {MANIFEST} ({e})")))?;
            entry.take(MAX_MANIFEST).read_to_string(&mut text).map_err(|e| fail(e.to_string()))?;
        }
        Some(Packing::TarGz) => {
            let mut tar = open_tar(path)?;
            let mut entries = tar.entries().map_err(|e| fail(format!("not a model archive (tar.gz): {e}")))?;
            let manifest = entries
                .find_map(|entry| {
                    let entry = entry.ok()?;
                    let found =
                        entry.path().ok().is_some_and(|p| under_one_folder(&p).as_deref() == Some(Path::new(MANIFEST)));
                    found.then_some(entry)
                })
                .ok_or_else(|| fail(format!("no {MANIFEST}")))?;
            manifest.take(MAX_MANIFEST).read_to_string(&mut text).map_err(|e| fail(e.to_string()))?;
        }
    }
    Manifest::parse(&text).map_err(fail)
}

/// `path` without its first folder when it has one (a tgz archive's files are under the model's folder), else
/// `path`.
fn under_one_folder(path: &Path) -> Option<PathBuf> {
    if path == Path::new(MANIFEST) {
        return Some(path.to_path_buf());
    }
    let mut components = path.components();
    components.next()?;
    Some(components.as_path().to_path_buf())
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<File>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    zip::ZipArchive::new(file).map_err(|e| format!("{}: not a model archive (zip): {e}", path.display()))
}

fn open_tar(path: &Path) -> Result<tar::Archive<flate2::read::GzDecoder<File>>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(file)))
}

/// The folder an archive was unpacked into, its lock, and the archive's root inside it.
#[derive(Debug)]
struct Held {
    dir: tempfile::TempDir,
    _lock: Option<File>,
    root: PathBuf,
}

/// An archive unpacked into a temporary folder, removed when the last clone is dropped. The folder is locked
/// while it lives (see [`sweep_stale`]).
#[derive(Debug, Clone)]
pub struct Unpacked(Arc<Held>);

impl Unpacked {
    /// The archive's root: where its `MAR-INF` is (the unpacked folder, or for a tgz archive the model's folder
    /// in it).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0.root
    }
}

impl PartialEq for Unpacked {
    fn eq(&self, other: &Self) -> bool {
        self.0.dir.path() == other.0.dir.path()
    }
}

impl Eq for Unpacked {}

/// Unpacks the archive file at `path` (`.mar`, `.tar.gz`, `.tgz`) into a new owner-only temporary folder.
///
/// # Errors
/// A message when the file is not such an archive, when an entry would land outside the folder or is not a plain
/// file or folder (a link, a device), or when the archive unpacks to more than [`MAX_UNPACKED`] bytes.
pub fn unpack(path: &Path) -> Result<Unpacked, String> {
    unpack_within(path, MAX_UNPACKED)
}

/// Writes the entries of one archive into a folder, refusing unsafe ones and counting the bytes written.
struct Writer<'a> {
    dir: &'a Path,
    budget: u64,
    limit: u64,
}

impl Writer<'_> {
    /// The place of entry `name`, whose path inside the archive is `relative`: refused unless it stays inside.
    fn target(&self, name: &str, relative: Option<&Path>) -> Result<PathBuf, String> {
        let relative = relative
            .filter(|p| p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)))
            .ok_or_else(|| format!("entry {name:?} would unpack outside the archive's folder"))?;
        Ok(self.dir.join(relative))
    }

    fn folder(&self, name: &str, relative: Option<&Path>) -> Result<(), String> {
        std::fs::create_dir_all(self.target(name, relative)?).map_err(|e| format!("{name}: {e}"))
    }

    fn file(&mut self, name: &str, relative: Option<&Path>, content: &mut dyn Read) -> Result<(), String> {
        let target = self.target(name, relative)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{name}: {e}"))?;
        }
        let mut out = File::create(&target).map_err(|e| format!("{name}: {e}"))?;
        // Counted as written, whatever the entry declares: the declared size of a crafted entry can lie.
        let written =
            std::io::copy(&mut content.take(self.budget + 1), &mut out).map_err(|e| format!("{name}: {e}"))?;
        out.flush().map_err(|e| format!("{name}: {e}"))?;
        self.budget = self
            .budget
            .checked_sub(written)
            .ok_or_else(|| format!("the archive unpacks to more than {} bytes", self.limit))?;
        Ok(())
    }
}

fn unzip(path: &Path, writer: &mut Writer<'_>) -> Result<(), String> {
    let mut zip = open_zip(path)?;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(|e| e.to_string())?;
        let name = entry.name().map_or_else(|_| format!("#{index}"), |n| n.to_string());
        if entry.is_symlink() {
            return Err(format!("entry {name:?} is a symbolic link; archives may hold files only"));
        }
        let relative = entry.enclosed_name();
        if entry.is_dir() {
            writer.folder(&name, relative.as_deref())?;
        } else {
            writer.file(&name, relative.as_deref(), &mut entry)?;
        }
    }
    Ok(())
}

fn untar(path: &Path, writer: &mut Writer<'_>) -> Result<(), String> {
    let mut tar = open_tar(path)?;
    let entries = tar.entries().map_err(|e| format!("not a model archive (tar.gz): {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a model archive (tar.gz): {e}"))?;
        let relative = entry.path().map_err(|e| e.to_string())?.into_owned();
        let name = relative.display().to_string();
        match entry.header().entry_type() {
            tar::EntryType::Directory => writer.folder(&name, Some(&relative))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => writer.file(&name, Some(&relative), &mut entry)?,
            // Metadata that the tar reader applies to the entries after it.
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
            other => return Err(format!("entry {name:?} is a {other:?}; archives may hold files and folders only")),
        }
    }
    Ok(())
}

fn unpack_within(path: &Path, limit: u64) -> Result<Unpacked, String> {
    let fail = |message: String| format!("{}: {message}", path.display());
    let packing = packing(path).ok_or_else(|| fail("not a .mar, .tar.gz or .tgz file".into()))?;
    let mut builder = tempfile::Builder::new();
    let prefix = format!("{PREFIX}{}-", std::process::id());
    builder.prefix(&prefix);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let dir = builder.tempdir().map_err(|e| fail(e.to_string()))?;
    // Locked before anything is written, so that a sweep never takes a folder being filled.
    let lock = lock_folder(dir.path());
    let mut writer = Writer { dir: dir.path(), budget: limit, limit };
    match packing {
        Packing::Zip => unzip(path, &mut writer),
        Packing::TarGz => untar(path, &mut writer),
    }
    .map_err(fail)?;
    let root = archive_root(dir.path());
    Ok(Unpacked(Arc::new(Held { dir, _lock: lock, root })))
}

/// Where the unpacked archive's `MAR-INF` is: the folder itself, or its only sub-folder (tgz archives).
fn archive_root(dir: &Path) -> PathBuf {
    if is_archive_folder(dir) {
        return dir.to_path_buf();
    }
    let mut children = std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok);
    match (children.next(), children.next()) {
        (Some(only), None) if is_archive_folder(&only.path()) => only.path(),
        _ => dir.to_path_buf(),
    }
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

    /// Writes a `.tar.gz` holding `entries` (path, content) as regular files.
    fn write_tgz(path: &Path, entries: &[(&str, &[u8])]) {
        let gz = flate2::write::GzEncoder::new(File::create(path).expect("file"), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *data).expect("entry");
        }
        tar.into_inner().expect("tar").finish().expect("gzip");
    }

    #[test]
    fn a_tgz_archive_unpacks_to_its_model_folder() {
        let dir = tempfile::tempdir().expect("dir");
        let tgz = dir.path().join("signnet.tar.gz");
        let manifest = format!("signnet/{MANIFEST}");
        write_tgz(&tgz, &[(&manifest, MANIFEST_JSON.as_bytes()), ("signnet/signnet.onnx", b"model bytes")]);
        assert!(is_archive_file(&tgz) && is_archive_file(Path::new("m.tgz")) && !is_archive_file(Path::new("m.gz")));
        assert_eq!(read_manifest(&tgz).expect("manifest").model_name, "signnet");
        let unpacked = unpack(&tgz).expect("unpacks");
        assert!(unpacked.path().ends_with("signnet"), "{}", unpacked.path().display());
        assert_eq!(std::fs::read(unpacked.path().join("signnet.onnx")).expect("model"), b"model bytes");
    }

    #[test]
    fn a_tgz_with_links_or_escapes_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let tgz = dir.path().join("evil.tgz");
        let gz = flate2::write::GzEncoder::new(File::create(&tgz).expect("file"), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_cksum();
        tar.append_link(&mut link, "m/model.onnx", "/etc/passwd").expect("link");
        tar.into_inner().expect("tar").finish().expect("gzip");
        assert!(unpack(&tgz).expect_err("a link").contains("Symlink"));

        // tar's builder refuses `..`, so the escaping name is written into the header by hand.
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        let gz = flate2::write::GzEncoder::new(File::create(&tgz).expect("file"), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append(&header, &b"x"[..]).expect("entry");
        tar.into_inner().expect("tar").finish().expect("gzip");
        assert!(unpack(&tgz).expect_err("an escape").contains("outside the archive"));
        assert!(!dir.path().join("escape").exists());
        std::fs::write(&tgz, b"not gzip").expect("write");
        assert!(unpack(&tgz).is_err() && read_manifest(&tgz).is_err());
    }

    #[test]
    fn the_archivers_manifest_parses() {
        let m = Manifest::parse(MANIFEST_JSON).expect("manifest");
        assert_eq!(m.model_name, "signnet");
        assert_eq!(m.model_version.as_deref(), Some("1.0"));
        assert_eq!(m.serialized_file.as_deref(), Some("signnet.onnx"));
        assert_eq!(m.handler.as_deref(), Some("base_handler"));
        assert!(Manifest::parse(r#"{"model": {}}"#).expect_err("no name").contains("modelName"));
        let bare =
            Manifest::parse(r#"{"model": {"modelName": "m", "handler": "", "modelVersion": ""}}"#).expect("bare");
        assert_eq!((bare.handler, bare.model_version, bare.serialized_file), (None, None, None), "empty is absent");
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
        assert!(unpack(&dir.path().join("model.onnx")).expect_err("not an archive").contains("not a .mar"));
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
