//! CUDA devices as NVIDIA's driver counts them: a module of its own below both device selection and the
//! TorchScript backend, which each ask it (device selection, and the backend before it opens libtorch_cuda).

use std::sync::OnceLock;

/// The CUDA devices of this machine (once per process), counted by NVIDIA's driver library (`libcuda.so.1`, which
/// honours `CUDA_VISIBLE_DEVICES`) without loading any runtime. The driver is opened only when the kernel lists an
/// NVIDIA GPU (`/proc/driver/nvidia/gpus`), so that a machine without one maps no CUDA library at all; a driver
/// that cannot be opened or fails counts as no device, with a warning.
#[must_use]
pub fn cuda_devices() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let listed = std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, Iterator::count);
        if listed == 0 {
            return 0;
        }
        driver::device_count().unwrap_or_else(|error| {
            tracing::warn!(%error, gpus = listed, "the kernel lists NVIDIA GPUs but CUDA's driver finds none");
            0
        })
    })
}

mod driver {
    //! NVIDIA's driver API, for counting devices: `cuInit` and `cuDeviceGetCount` of `libcuda.so.1`.
    #![allow(unsafe_code, reason = "FFI into NVIDIA's driver library")]

    use std::ffi::{c_int, c_uint};

    /// How many CUDA devices the driver gives this process.
    pub(super) fn device_count() -> Result<usize, String> {
        // SAFETY: libcuda's initialisers only set up the driver's own state.
        let library = unsafe { libloading::Library::new("libcuda.so.1") }.map_err(|e| e.to_string())?;
        // SAFETY: the signatures of the CUDA driver API (`CUresult` is an int).
        let count = unsafe {
            let init = library.get::<unsafe extern "C" fn(c_uint) -> c_int>(b"cuInit\0").map_err(|e| e.to_string())?;
            let get_count = library
                .get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cuDeviceGetCount\0")
                .map_err(|e| e.to_string())?;
            match init(0) {
                0 => {}
                code => return Err(format!("cuInit failed with CUresult {code}")),
            }
            let mut count: c_int = 0;
            match get_count(&raw mut count) {
                0 => count,
                code => return Err(format!("cuDeviceGetCount failed with CUresult {code}")),
            }
        };
        // The driver stays loaded: ONNX Runtime's or libtorch's CUDA will use it.
        std::mem::forget(library);
        Ok(usize::try_from(count).unwrap_or(0))
    }
}
