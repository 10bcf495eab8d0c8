//! CUDA streams from libtorch's pool, through the C++ shim in `engine/csrc/stream.cpp` (tch has no stream API).
//! The only unsafe code of the backend lives here: calls into the shim, which catches every C++ exception and
//! reports it as a message.
#![allow(unsafe_code, reason = "FFI into the C++ stream shim")]

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::backend::BackendError;

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

/// A stream of libtorch's pool. Pool streams are never destroyed, so the handle stays valid for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolStream {
    /// c10's stream id (distinct streams have distinct ids).
    pub(crate) id: i64,
    /// The `cudaStream_t`.
    pub(crate) handle: *mut c_void,
}

/// Calls the shim with a buffer for its error message.
fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), BackendError> {
    let mut err = [0 as c_char; 512];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message of at most `err.len()` bytes, and the buffer starts zeroed.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
    Err(BackendError::load(format!("{what}: {}", super::first_line(&message))))
}

fn device_index(index: usize) -> Result<c_int, BackendError> {
    c_int::try_from(index).map_err(|_| BackendError::load(format!("CUDA device index {index} is out of range")))
}

/// Takes the next stream of CUDA device `index`'s pool; with `make_current`, it becomes the calling thread's current
/// stream on that device for the rest of the thread's life (or until it takes another).
///
/// # Errors
/// [`BackendError::Load`] when libtorch has no CUDA support loaded or the device does not exist.
pub(crate) fn pool_stream(index: usize, make_current: bool) -> Result<PoolStream, BackendError> {
    let index = device_index(index)?;
    let (mut id, mut handle) = (0_i64, std::ptr::null_mut());
    call("cannot take a CUDA stream", |err, len| {
        // SAFETY: the out-pointers are valid for writes and `err` for `len` bytes during the call.
        unsafe { ferroserve_cuda_pool_stream(index, c_int::from(make_current), &raw mut id, &raw mut handle, err, len) }
    })?;
    Ok(PoolStream { id, handle })
}

/// The id of the calling thread's current stream on CUDA device `index` (tests use it to check that two workers
/// run on two streams).
///
/// # Errors
/// [`BackendError::Load`] when libtorch has no CUDA support loaded or the device does not exist.
pub fn current_cuda_stream(index: usize) -> Result<i64, BackendError> {
    let index = device_index(index)?;
    let mut id = 0_i64;
    call("cannot read the current CUDA stream", |err, len| {
        // SAFETY: `id` is valid for writes and `err` for `len` bytes during the call.
        unsafe { ferroserve_cuda_stream_current(index, &raw mut id, err, len) }
    })?;
    Ok(id)
}
