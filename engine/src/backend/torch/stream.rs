//! CUDA streams from libtorch's pool, through the plugin (its C++ shim `torch-plugin/csrc/stream.cpp`: tch has no
//! stream API).

use std::ffi::c_int;

use super::torch_plugin;
use crate::backend::BackendError;

fn device_index(index: usize) -> Result<c_int, BackendError> {
    c_int::try_from(index).map_err(|_| BackendError::load(format!("CUDA device index {index} is out of range")))
}

/// Takes the next stream of CUDA device `index`'s pool; with `make_current`, it becomes the calling thread's current
/// stream on that device for the rest of the thread's life (or until it takes another). Returns c10's id of the
/// stream (distinct streams have distinct ids).
///
/// # Errors
/// [`BackendError::Load`] when the plugin cannot be opened, libtorch has no CUDA support loaded or the device does
/// not exist.
pub(crate) fn pool_stream(index: usize, make_current: bool) -> Result<i64, BackendError> {
    let index = device_index(index)?;
    let (id, _handle) = torch_plugin()?
        .pool_stream(index, make_current)
        .map_err(|e| BackendError::load(format!("cannot take a CUDA stream: {}", super::first_line(&e))))?;
    Ok(id)
}

/// The id of the calling thread's current stream on CUDA device `index` (tests use it to check that two workers
/// run on two streams).
///
/// # Errors
/// [`BackendError::Load`] when the plugin cannot be opened, libtorch has no CUDA support loaded or the device does
/// not exist.
pub fn current_cuda_stream(index: usize) -> Result<i64, BackendError> {
    let index = device_index(index)?;
    torch_plugin()?
        .current_stream(index)
        .map_err(|e| BackendError::load(format!("cannot read the current CUDA stream: {}", super::first_line(&e))))
}
