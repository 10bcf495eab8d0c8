//! The TorchScript plugin (`libferroserve_torch.so`, the `torch-plugin` package): found and opened with dlopen
//! when the first TorchScript model loads, so that a process serving only ONNX models never maps libtorch or CUDA
//! (Triton opens its backends the same way). The only unsafe code of the backend lives here: calls through the
//! plugin's C ABI, which catches every panic and C++ exception and hands back a message.
//!
//! Where it is looked for, first found wins: `FERROSERVE_TORCH_PLUGIN` (a path), then beside the executable, in
//! its parent folder (where cargo puts it for the test binaries in `target/*/deps`) and in `../lib` (the images'
//! `/opt/ferroserve/{bin,lib}`).
#![allow(unsafe_code, reason = "FFI into the TorchScript plugin")]

use std::{
    ffi::{c_char, c_int, c_void, CStr, CString},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::OnceLock,
};

use std::os::unix::ffi::OsStrExt;

use libloading::Library;

use crate::backend::{BackendError, Device};

/// The file name of the plugin.
pub const PLUGIN_FILE: &str = "libferroserve_torch.so";

/// The environment variable that names the plugin's path.
pub const PLUGIN_ENV: &str = "FERROSERVE_TORCH_PLUGIN";

/// The ABI version this engine speaks (`ABI_VERSION` in `torch-plugin/src/lib.rs`).
const ABI_VERSION: u32 = 1;

/// The forward failed: the model rejected the input, or the device failed.
const FORWARD_FAILED: c_int = -1;

/// The plugin's functions, read once from the library (which is never closed).
struct Api {
    string_free: unsafe extern "C" fn(*mut c_char),
    enable_cuda: unsafe extern "C" fn(*mut *mut c_char) -> c_int,
    has_mps: extern "C" fn() -> c_int,
    set_threads: extern "C" fn(c_int),
    load: unsafe extern "C" fn(*const c_char, c_int, c_int, *mut *mut c_void, *mut *mut c_char) -> c_int,
    module_free: unsafe extern "C" fn(*mut c_void),
    forward: unsafe extern "C" fn(
        *const c_void,
        c_int,
        c_int,
        *const f32,
        usize,
        *const i64,
        usize,
        *mut Output,
        *mut *mut c_char,
    ) -> c_int,
    output_free: unsafe extern "C" fn(*mut c_void),
    pool_stream: unsafe extern "C" fn(c_int, c_int, *mut i64, *mut *mut c_void, *mut *mut c_char) -> c_int,
    current_stream: unsafe extern "C" fn(c_int, *mut i64, *mut *mut c_char) -> c_int,
}

/// `Output` of the ABI: the forward's result on the host, owned by the plugin.
#[repr(C)]
struct Output {
    handle: *mut c_void,
    data: *const f32,
    numel: usize,
    dims: *const i64,
    ndims: usize,
}

/// How a forward failed.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// The forward itself (staging the input or the module): libtorch's message.
    Forward(String),
    /// Anything else (the copy back to the host, the device): libtorch's message.
    Other(String),
}

/// The plugin, opened (once per process) at the first call.
///
/// # Errors
/// [`BackendError::Load`] saying where the plugin was looked for and why it could not be opened (not built, or
/// libtorch not found), or that it is of another build.
pub(crate) fn plugin() -> Result<&'static Plugin, BackendError> {
    static PLUGIN: OnceLock<Result<Plugin, String>> = OnceLock::new();
    PLUGIN.get_or_init(Plugin::open).as_ref().map_err(BackendError::load)
}

/// Where the plugin is looked for, in order.
pub(crate) fn candidates() -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os(PLUGIN_ENV) {
        return vec![PathBuf::from(path)];
    }
    let exe = std::env::current_exe().ok();
    let dir = exe.as_deref().and_then(Path::parent);
    let Some(dir) = dir else {
        return vec![PathBuf::from(PLUGIN_FILE)];
    };
    let mut found = vec![dir.join(PLUGIN_FILE)];
    if let Some(parent) = dir.parent() {
        found.push(parent.join(PLUGIN_FILE));
        found.push(parent.join("lib").join(PLUGIN_FILE));
    }
    found
}

/// The opened plugin library and its functions.
pub(crate) struct Plugin {
    api: Api,
    // Kept so that the functions stay valid; dropped never (the plugin lives in a static).
    _library: Library,
}

impl Plugin {
    fn open() -> Result<Self, String> {
        let candidates = candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            let looked: Vec<_> = candidates.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "TorchScript needs ferroserve's plugin {PLUGIN_FILE}, not found at {} (build it with `cargo build \
                 -p ferroserve-torch-plugin`, or set {PLUGIN_ENV} to its path)",
                looked.join(", ")
            ));
        };
        // SAFETY: the plugin's initialisers are libtorch's, which only register its operators.
        let library = unsafe { Library::new(path) }.map_err(|e| {
            format!("cannot open the TorchScript plugin {} (is libtorch installed? `make deps`): {e}", path.display())
        })?;
        let api = Self::read_api(&library).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(plugin = %path.display(), "TorchScript plugin loaded");
        Ok(Self { api, _library: library })
    }

    fn read_api(library: &Library) -> Result<Api, String> {
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the plugin's functions have the types of its ABI, checked by its version below.
                *unsafe { library.get(concat!("ferroserve_torch_", $name, "\0").as_bytes()) }
                    .map_err(|e| format!("not ferroserve's TorchScript plugin: {e}"))?
            };
        }
        let version: extern "C" fn() -> u32 = symbol!("abi_version");
        if version() != ABI_VERSION {
            return Err(format!("plugin ABI {}, this server speaks {ABI_VERSION}: rebuild it", version()));
        }
        Ok(Api {
            string_free: symbol!("string_free"),
            enable_cuda: symbol!("enable_cuda"),
            has_mps: symbol!("has_mps"),
            set_threads: symbol!("set_threads"),
            load: symbol!("load"),
            module_free: symbol!("module_free"),
            forward: symbol!("forward"),
            output_free: symbol!("output_free"),
            pool_stream: symbol!("pool_stream"),
            current_stream: symbol!("current_stream"),
        })
    }

    /// Calls `f` with an error slot and takes the message it may leave there.
    fn call(&self, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), (c_int, String)> {
        let mut err: *mut c_char = std::ptr::null_mut();
        let code = f(&raw mut err);
        if code == 0 {
            return Ok(());
        }
        let message = if err.is_null() {
            format!("the TorchScript plugin failed ({code}) without a message")
        } else {
            // SAFETY: the plugin stored a NUL-terminated string that it alone frees.
            let text = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
            // SAFETY: freed once, by the plugin that made it.
            unsafe { (self.api.string_free)(err) };
            text
        };
        Err((code, message))
    }

    /// Loads libtorch_cuda into the process (once): needed before any CUDA work, and best done before libtorch
    /// first asks whether CUDA is there.
    pub(crate) fn enable_cuda(&self) -> Result<(), String> {
        // SAFETY: `err` is a valid slot.
        self.call(|err| unsafe { (self.api.enable_cuda)(err) }).map_err(|(_, m)| m)
    }

    /// Whether Apple's MPS is usable.
    pub(crate) fn has_mps(&self) -> bool {
        (self.api.has_mps)() != 0
    }

    /// Sets libtorch's intra-op threads.
    pub(crate) fn set_threads(&self, threads: usize) {
        (self.api.set_threads)(c_int::try_from(threads).unwrap_or(c_int::MAX));
    }

    /// Loads the TorchScript file at `path` onto `device`, in eval mode.
    ///
    /// # Errors
    /// libtorch's message.
    pub(crate) fn load(&'static self, path: &Path, device: Device) -> Result<Module, String> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| "the path holds a NUL".to_string())?;
        let (kind, index) = abi_device(device)?;
        let mut module: *mut c_void = std::ptr::null_mut();
        // SAFETY: the path is NUL-terminated, the out-pointers valid for the call.
        self.call(|err| unsafe { (self.api.load)(c_path.as_ptr(), kind, index, &raw mut module, err) })
            .map_err(|(_, m)| m)?;
        let ptr = NonNull::new(module).ok_or_else(|| "the plugin returned no module".to_string())?;
        Ok(Module { plugin: self, ptr, device })
    }

    /// A stream of CUDA device `index`'s pool: its id and `cudaStream_t`; with `make_current`, the calling thread's
    /// current stream on that device from now on.
    pub(crate) fn pool_stream(&self, index: c_int, make_current: bool) -> Result<(i64, *mut c_void), String> {
        let (mut id, mut handle) = (0_i64, std::ptr::null_mut());
        // SAFETY: the out-pointers are valid for the call.
        self.call(|err| unsafe {
            (self.api.pool_stream)(index, c_int::from(make_current), &raw mut id, &raw mut handle, err)
        })
        .map_err(|(_, m)| m)?;
        Ok((id, handle))
    }

    /// The id of the calling thread's current stream on CUDA device `index`.
    pub(crate) fn current_stream(&self, index: c_int) -> Result<i64, String> {
        let mut id = 0_i64;
        // SAFETY: the out-pointer is valid for the call.
        self.call(|err| unsafe { (self.api.current_stream)(index, &raw mut id, err) }).map_err(|(_, m)| m)?;
        Ok(id)
    }
}

/// The device as the ABI names it: a kind and an index.
fn abi_device(device: Device) -> Result<(c_int, c_int), String> {
    match device {
        Device::Cpu => Ok((0, 0)),
        Device::Cuda(index) => {
            Ok((1, c_int::try_from(index).map_err(|_| format!("CUDA device index {index} is out of range"))?))
        }
        Device::Mps => Ok((2, 0)),
    }
}

/// A TorchScript module loaded by the plugin, freed when dropped. Shared by every worker on its device: libtorch's
/// modules may run forwards from several threads at once.
pub(crate) struct Module {
    plugin: &'static Plugin,
    ptr: NonNull<c_void>,
    device: Device,
}

// SAFETY: the module is a `torch::jit::Module` behind tch's `CModule`, which is Send and Sync (tch declares both).
unsafe impl Send for Module {}
// SAFETY: as above: concurrent forwards on one module are what libtorch's interpreter supports.
unsafe impl Sync for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the module came from this plugin and is freed once, when no forward can use it any more.
        unsafe { (self.plugin.api.module_free)(self.ptr.as_ptr()) };
    }
}

/// A forward's result on the host.
#[derive(Debug)]
pub(crate) struct HostOutput {
    /// The values, row-major.
    pub(crate) values: Vec<f32>,
    /// The shape, batch first.
    pub(crate) dims: Vec<i64>,
}

impl Module {
    /// Runs a forward on `input`, of shape `dims` (batch first), on the module's device, and copies the output to
    /// the host.
    ///
    /// # Errors
    /// [`ForwardError::Forward`] when the forward fails, [`ForwardError::Other`] when the rest does.
    pub(crate) fn forward(&self, input: &[f32], dims: &[i64]) -> Result<HostOutput, ForwardError> {
        let (kind, index) = abi_device(self.device).map_err(ForwardError::Other)?;
        let mut out =
            Output { handle: std::ptr::null_mut(), data: std::ptr::null(), numel: 0, dims: std::ptr::null(), ndims: 0 };
        let api = &self.plugin.api;
        let called = self.plugin.call(|err| {
            // SAFETY: the module is alive, the slices valid for their lengths, `out` valid for a write.
            unsafe {
                (api.forward)(
                    self.ptr.as_ptr(),
                    kind,
                    index,
                    input.as_ptr(),
                    input.len(),
                    dims.as_ptr(),
                    dims.len(),
                    &raw mut out,
                    err,
                )
            }
        });
        match called {
            Ok(()) => {}
            Err((FORWARD_FAILED, message)) => return Err(ForwardError::Forward(message)),
            Err((_, message)) => return Err(ForwardError::Other(message)),
        }
        // SAFETY: on success the plugin filled `out` with pointers valid until `output_free`.
        let output = unsafe {
            let values =
                if out.numel == 0 { Vec::new() } else { std::slice::from_raw_parts(out.data, out.numel).to_vec() };
            let dims =
                if out.ndims == 0 { Vec::new() } else { std::slice::from_raw_parts(out.dims, out.ndims).to_vec() };
            (api.output_free)(out.handle);
            HostOutput { values, dims }
        };
        Ok(output)
    }
}
