//! Request bodies parsed in place on simd-json's tape, with scratch buffers reused per I/O thread: no tree of
//! allocations per request. The landmark handler and the KServe v2 infer handler walk the tape directly.

use simd_json::prelude::*;

use crate::error::ApiError;

/// A parsed JSON value, walked in place on the tape.
pub(crate) type Json<'t, 'i> = simd_json::tape::Value<'t, 'i>;

/// A JSON object on the tape.
pub(crate) type Object<'t, 'i> = simd_json::tape::Object<'t, 'i>;

thread_local! {
    /// simd-json's scratch buffers, reused by each I/O thread across requests.
    static BUFFERS: std::cell::RefCell<simd_json::Buffers> = std::cell::RefCell::new(simd_json::Buffers::default());
}

/// Parses `body` in place (hence `&mut`); `expected` shows the body's form in the message for an empty one.
///
/// # Errors
/// [`ApiError`] 400 when the body is empty or not valid JSON.
pub(crate) fn tape<'i>(body: &'i mut [u8], expected: &str) -> Result<simd_json::tape::Tape<'i>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!("empty body: expected JSON {expected}")));
    }
    BUFFERS
        .with_borrow_mut(|buffers| simd_json::to_tape_with_buffers(body, buffers))
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))
}

/// The body's top-level object.
///
/// # Errors
/// [`ApiError`] 400 when the body is another JSON value.
pub(crate) fn root<'t, 'i>(tape: &'t simd_json::tape::Tape<'i>) -> Result<Object<'t, 'i>, ApiError> {
    tape.as_value().into_object().ok_or_else(|| ApiError::bad_request("body must be a JSON object"))
}

/// A JSON number as a finite `f32`: `None` for other values, and for numbers out of `f32`'s range.
pub(crate) fn finite_f32(v: Json<'_, '_>) -> Option<f32> {
    #[allow(clippy::cast_possible_truncation)]
    v.cast_f64().map(|x| x as f32).filter(|x| x.is_finite())
}

/// What a JSON value is, for error messages.
pub(crate) fn describe(v: Json<'_, '_>) -> String {
    match v.as_str() {
        Some(s) => format!("the string {s:?}"),
        None => format!("{:?}", v.value_type()).to_lowercase(),
    }
}
