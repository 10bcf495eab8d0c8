//! ferroserve's TorchScript backend as a plugin library, `libferroserve_torch.so`: the only code of ferroserve that
//! links libtorch (through tch). ferroserve-engine opens it with dlopen when the first TorchScript model loads
//! (`engine/src/backend/torch/plugin.rs`), as Triton opens its backends, so that a server serving only ONNX models
//! never maps libtorch or CUDA.
//!
//! The ABI is small and C: load a module onto a device, run a forward on one f32 tensor, free what was handed out,
//! and CUDA's per-thread pool streams. Every function that can fail returns 0, or a negative code after storing a
//! message in `*err` (a string the caller frees with [`ferroserve_torch_string_free`]); no panic and no C++
//! exception crosses the boundary. [`ferroserve_torch_abi_version`] lets the engine refuse a plugin of another
//! build.
//!
//! libtorch_cuda is not among the plugin's dependencies: [`ferroserve_torch_enable_cuda`] opens it (from the
//! plugin's rpath) when the engine finds a CUDA GPU, so that on a machine without one only libtorch_cpu and libc10
//! are loaded.
#![allow(unsafe_code, reason = "a C ABI, called through dlopen by ferroserve-engine")]

use std::{
    ffi::{c_char, c_int, c_void, CStr, CString, OsStr},
    os::unix::ffi::OsStrExt,
    panic::{catch_unwind, AssertUnwindSafe},
    path::Path,
    sync::OnceLock,
};

use tch::{CModule, Device, Kind, Tensor};

/// The version of this ABI; the engine refuses a plugin whose version is not its own.
pub const ABI_VERSION: u32 = 1;

/// Device kinds of the ABI.
const CPU: c_int = 0;
const CUDA: c_int = 1;
const MPS: c_int = 2;

/// The forward failed (staging the input or the module itself): the model's or the input's fault.
const FORWARD_FAILED: c_int = -1;
/// Copying the output back to the host failed: the device's fault.
const COPY_FAILED: c_int = -2;
/// Any other failure (bad arguments, no CUDA).
const FAILED: c_int = -3;

/// The result of a forward, on the host: `numel` f32 values row-major, of shape `dims`. Owned by the plugin until
/// [`ferroserve_torch_output_free`] is called on `handle`.
#[repr(C)]
pub struct Output {
    /// What to free.
    pub handle: *mut c_void,
    /// The values.
    pub data: *const f32,
    /// How many.
    pub numel: usize,
    /// The shape.
    pub dims: *const i64,
    /// Its rank.
    pub ndims: usize,
}

/// What an [`Output`] points into.
struct HostTensor {
    tensor: Tensor,
    dims: Vec<i64>,
}

/// Runs `f`, turning an error or a panic into the ABI's code and message.
///
/// # Safety
/// `err` is null or valid for a write.
unsafe fn guarded(err: *mut *mut c_char, f: impl FnOnce() -> Result<(), (c_int, String)>) -> c_int {
    let (code, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(failure)) => failure,
        Err(panic) => {
            let what = panic.downcast_ref::<&str>().map(|s| (*s).to_string()).or_else(|| panic.downcast_ref().cloned());
            (FAILED, format!("the TorchScript plugin panicked: {}", what.unwrap_or_default()))
        }
    };
    if !err.is_null() {
        let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the caller gives a valid `err`; the string is freed by `ferroserve_torch_string_free`.
        unsafe { *err = message.into_raw() };
    }
    code
}

fn device(kind: c_int, index: c_int) -> Result<Device, (c_int, String)> {
    match (kind, usize::try_from(index)) {
        (CPU, _) => Ok(Device::Cpu),
        (CUDA, Ok(index)) => {
            enable_cuda().clone().map_err(|e| (FAILED, e))?;
            Ok(Device::Cuda(index))
        }
        (MPS, _) => Ok(Device::Mps),
        _ => Err((FAILED, format!("unknown device kind {kind} index {index}"))),
    }
}

/// Opens libtorch_cuda once, with its symbols global, so that it registers CUDA with c10 and the dispatcher.
fn enable_cuda() -> &'static Result<(), String> {
    static CUDA_LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    CUDA_LOADED.get_or_init(|| {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // SAFETY: libtorch_cuda's initialisers only register CUDA with the libtorch already loaded.
        match unsafe { Library::open(Some("libtorch_cuda.so"), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(library) => {
                // Never unloaded: its registrations live as long as the process.
                std::mem::forget(library);
                Ok(())
            }
            Err(e) => Err(format!("cannot load libtorch_cuda (a libtorch without CUDA?): {e}")),
        }
    })
}

fn path<'a>(ptr: *const c_char) -> Result<&'a Path, (c_int, String)> {
    if ptr.is_null() {
        return Err((FAILED, "a null path".into()));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    Ok(Path::new(OsStr::from_bytes(unsafe { CStr::from_ptr(ptr) }.to_bytes())))
}

/// The version of this ABI ([`ABI_VERSION`]).
#[no_mangle]
pub extern "C" fn ferroserve_torch_abi_version() -> u32 {
    ABI_VERSION
}

/// Frees a message stored in `*err` by any other function.
///
/// # Safety
/// `message` is null or a string this plugin handed out, freed once.
#[no_mangle]
pub unsafe extern "C" fn ferroserve_torch_string_free(message: *mut c_char) {
    if !message.is_null() {
        // SAFETY: made by `CString::into_raw` in `guarded`.
        drop(unsafe { CString::from_raw(message) });
    }
}

/// Loads libtorch_cuda (once), for a machine with a CUDA GPU.
///
/// # Safety
/// `err` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferroserve_torch_enable_cuda(err: *mut *mut c_char) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { guarded(err, || enable_cuda().clone().map_err(|e| (FAILED, e))) }
}

/// Whether Apple's MPS is usable: 1 or 0.
#[no_mangle]
pub extern "C" fn ferroserve_torch_has_mps() -> c_int {
    catch_unwind(tch::utils::has_mps).map_or(0, c_int::from)
}

/// Sets libtorch's intra-op threads for the process.
#[no_mangle]
pub extern "C" fn ferroserve_torch_set_threads(threads: c_int) {
    let _ = catch_unwind(|| tch::set_num_threads(threads.max(1)));
}

/// Loads the TorchScript file at `file` onto device `kind` (0 CPU, 1 CUDA, 2 MPS) `index`, in eval mode, and
/// stores the module in `*module`.
///
/// # Safety
/// `file` is a NUL-terminated path, `module` valid for a write, `err` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferroserve_torch_load(
    file: *const c_char,
    kind: c_int,
    index: c_int,
    module: *mut *mut c_void,
    err: *mut *mut c_char,
) -> c_int {
    let load = || {
        let on = device(kind, index)?;
        let mut loaded = CModule::load_on_device(path(file)?, on).map_err(|e| (FAILED, e.to_string()))?;
        loaded.f_set_eval().map_err(|e| (FAILED, e.to_string()))?;
        // SAFETY: the caller gives a valid `module`.
        unsafe { *module = Box::into_raw(Box::new(loaded)).cast() };
        Ok(())
    };
    // SAFETY: as the caller promises.
    unsafe { guarded(err, load) }
}

/// Frees a module of [`ferroserve_torch_load`].
///
/// # Safety
/// `module` is null or a module of this plugin that no forward is using, freed once.
#[no_mangle]
pub unsafe extern "C" fn ferroserve_torch_module_free(module: *mut c_void) {
    if !module.is_null() {
        // SAFETY: made by `Box::into_raw` in `ferroserve_torch_load`.
        drop(unsafe { Box::from_raw(module.cast::<CModule>()) });
    }
}

/// Moves the stacked batch to the device: pinned host memory and an asynchronous copy on the thread's current
/// stream for CUDA, a plain copy for MPS, no copy beyond the tensor's own for the CPU.
fn stage(input: &[f32], dims: &[i64], on: Device) -> Result<Tensor, tch::TchError> {
    let host = Tensor::f_from_slice(input)?.f_view(dims)?;
    match on {
        Device::Cpu => Ok(host),
        Device::Cuda(_) => host.f_pin_memory(on)?.f_to_device_(on, Kind::Float, true, false),
        _ => host.f_to_device_(on, Kind::Float, false, false),
    }
}

/// Runs `module` under `no_grad` on the `numel` values at `input`, of shape `dims` (batch first), moved to device
/// `kind` `index`, and stores the output, copied to the host (a synchronous copy on the thread's current stream),
/// in `*output`. Returns -1 when the forward fails (libtorch's message: the model rejected the input, or the device
/// failed), -2 when the copy back does.
///
/// # Safety
/// `module` is a module of [`ferroserve_torch_load`], `input` valid for `numel` reads, `dims` for `ndims`,
/// `output` for a write, `err` null or valid for a write.
#[no_mangle]
#[allow(clippy::too_many_arguments, reason = "a C ABI passes slices as pointer and length")]
pub unsafe extern "C" fn ferroserve_torch_forward(
    module: *const c_void,
    kind: c_int,
    index: c_int,
    input: *const f32,
    numel: usize,
    dims: *const i64,
    ndims: usize,
    output: *mut Output,
    err: *mut *mut c_char,
) -> c_int {
    let forward = || {
        let on = device(kind, index)?;
        // SAFETY: as the caller promises.
        let (module, input, dims) = unsafe {
            (
                &*module.cast::<CModule>(),
                std::slice::from_raw_parts(input, numel),
                std::slice::from_raw_parts(dims, ndims),
            )
        };
        let _no_grad = tch::no_grad_guard();
        let failed = |e: tch::TchError| (FORWARD_FAILED, e.to_string());
        let result = module.forward_ts(&[stage(input, dims, on).map_err(failed)?]).map_err(failed)?;
        let copy_failed = |e: tch::TchError| (COPY_FAILED, e.to_string());
        let tensor = result.f_to_device_(Device::Cpu, Kind::Float, false, false).map_err(copy_failed)?;
        let tensor = tensor.f_contiguous().map_err(copy_failed)?;
        let host = Box::new(HostTensor { dims: tensor.size(), tensor });
        // SAFETY: the caller gives a valid `output`; the pointers stay valid until the box is freed.
        unsafe {
            *output = Output {
                data: host.tensor.data_ptr().cast::<f32>().cast_const(),
                numel: host.tensor.numel(),
                dims: host.dims.as_ptr(),
                ndims: host.dims.len(),
                handle: Box::into_raw(host).cast(),
            };
        }
        Ok(())
    };
    // SAFETY: as the caller promises.
    unsafe { guarded(err, forward) }
}

/// Frees the output of a forward.
///
/// # Safety
/// `handle` is null or the `handle` of an [`Output`] of this plugin, freed once.
#[no_mangle]
pub unsafe extern "C" fn ferroserve_torch_output_free(handle: *mut c_void) {
    if !handle.is_null() {
        // SAFETY: made by `Box::into_raw` in `ferroserve_torch_forward`.
        drop(unsafe { Box::from_raw(handle.cast::<HostTensor>()) });
    }
}

extern "C" {
    fn ferroserve_cuda_pool_stream(
        index: c_int,
        make_current: c_int,
        id: *mut i64,
        handle: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ferroserve_cuda_stream_current(index: c_int, id: *mut i64, err: *mut c_char, len: usize) -> c_int;
}

/// Calls the C++ shim with a buffer for its message.
fn shim(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), (c_int, String)> {
    enable_cuda().clone().map_err(|e| (FAILED, e))?;
    let mut buffer = [0 as c_char; 512];
    if f(buffer.as_mut_ptr(), buffer.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message of at most the buffer's length, and the buffer starts zeroed.
    Err((FAILED, unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().into_owned()))
}

/// Takes the next stream of CUDA device `index`'s pool and stores its id and `cudaStream_t`; with `make_current`,
/// it becomes the calling thread's current stream on that device. Pool streams are never destroyed.
///
/// # Safety
/// `id` and `handle` are valid for writes, `err` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferroserve_torch_pool_stream(
    index: c_int,
    make_current: c_int,
    id: *mut i64,
    handle: *mut *mut c_void,
    err: *mut *mut c_char,
) -> c_int {
    // SAFETY: as the caller promises; the shim writes only through the pointers it is given.
    unsafe { guarded(err, || shim(|buf, len| ferroserve_cuda_pool_stream(index, make_current, id, handle, buf, len))) }
}

/// Stores the id of the calling thread's current stream on CUDA device `index`.
///
/// # Safety
/// `id` is valid for a write, `err` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferroserve_torch_current_stream(index: c_int, id: *mut i64, err: *mut *mut c_char) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { guarded(err, || shim(|buf, len| ferroserve_cuda_stream_current(index, id, buf, len))) }
}
