//! A request as a Python handler takes it and the handler's answer, as they travel through the engine: the
//! payload of requests for archives whose own handler runs in TorchServe's worker ([`super::python`]).

/// One request as TorchServe's front end hands it to a Python worker: the HTTP headers, and the parameters (the
/// body as `body`, each query parameter by its name), each with its content type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerInput {
    /// Request headers, name and value, as the client sent them.
    pub headers: Vec<(String, String)>,
    /// The request's parameters, in order.
    pub parts: Vec<Part>,
}

/// One parameter of a [`HandlerInput`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Part {
    /// `body`, `data`, or the query parameter's name.
    pub name: String,
    /// Its content type (empty when none: query parameters, a body sent without one).
    pub content_type: String,
    /// Its bytes; the worker decodes JSON and text by `content_type` as TorchServe does
    /// (`TS_DECODE_INPUT_REQUEST`).
    pub value: Vec<u8>,
}

/// What a Python handler answered one request: TorchServe's per-request status (`context.set_response_status`),
/// content type, headers and body, as the handler made them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerOutput {
    /// The HTTP status (200 unless the handler set another).
    pub status: u16,
    /// The reason phrase the handler set (empty when none).
    pub reason: String,
    /// The content type the handler set, when it set one.
    pub content_type: Option<String>,
    /// The headers the handler set.
    pub headers: Vec<(String, String)>,
    /// The body: bytes and strings as returned, anything else as the worker's JSON (`json.dumps(indent=2)`).
    pub body: Vec<u8>,
}
