//! How one request ended, as both transports report it: the status (a gRPC code as the HTTP status of the same
//! meaning), the bytes received and the server's own timing, or why no answer came.

/// What the server said about its own timing, from ferroserve's `x-queue-time`, `x-inference-time` (ms) and
/// `x-batch-size` headers; absent on servers that do not send them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerTiming {
    /// Time in the queue, ms.
    pub queue_ms: Option<f64>,
    /// Time in the model, ms.
    pub inference_ms: Option<f64>,
    /// Requests in the batch.
    pub batch_size: Option<f64>,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// An HTTP answer, whatever its status.
    Response {
        /// Status code.
        status: u16,
        /// Body bytes received.
        bytes: u64,
        /// The server's timing headers.
        timing: ServerTiming,
    },
    /// No complete answer within the timeout.
    Timeout,
    /// The connection could not be opened.
    Connect,
    /// The connection failed during the exchange.
    Io,
}

impl Outcome {
    /// True for a 2xx answer.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Response { status, .. } if (200..300).contains(status))
    }

    /// The key this outcome is counted under in the error table: the status code, `timeout`, `connect` or
    /// `io`; `None` for a success.
    pub fn error_key(&self) -> Option<String> {
        match self {
            Outcome::Response { status, .. } if (200..300).contains(status) => None,
            Outcome::Response { status, .. } => Some(status.to_string()),
            Outcome::Timeout => Some("timeout".into()),
            Outcome::Connect => Some("connect".into()),
            Outcome::Io => Some("io".into()),
        }
    }
}

/// ferroserve's timing headers (or gRPC metadata) of an answer.
pub(crate) fn server_timing(headers: &hyper::HeaderMap) -> ServerTiming {
    let number = |name: &str| -> Option<f64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    ServerTiming {
        queue_ms: number("x-queue-time"),
        inference_ms: number("x-inference-time"),
        batch_size: number("x-batch-size"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_keys() {
        let ok = Outcome::Response { status: 200, bytes: 1, timing: ServerTiming::default() };
        let busy = Outcome::Response { status: 503, bytes: 1, timing: ServerTiming::default() };
        assert_eq!(ok.error_key(), None);
        assert_eq!(busy.error_key().as_deref(), Some("503"));
        assert_eq!(Outcome::Timeout.error_key().as_deref(), Some("timeout"));
    }
}
