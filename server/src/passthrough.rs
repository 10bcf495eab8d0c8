//! Requests and answers of archives whose own Python handler runs in TorchServe's worker: a request goes to the
//! handler as TorchServe's front end hands it over (its headers; each query parameter, then the body as `body`
//! with its media type), and the handler's answer comes back as the handler made it (status, reason, content
//! type, headers, body).

use bytes::Bytes;
use ferroserve_engine::request::{HandlerInput, HandlerOutput, Part};
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderName, HeaderValue, CONTENT_TYPE},
    Request, Response, StatusCode,
};

use crate::reply::Reply;

/// The request's headers and parameters, without its body (read separately, within the server's limits).
#[must_use]
pub fn input_of(req: &Request<Incoming>) -> HandlerInput {
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let parts = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(name, value)| Part {
            name: name.into_owned(),
            content_type: String::new(),
            value: value.into_owned().into_bytes(),
        })
        .collect();
    HandlerInput { headers, parts }
}

/// `input` with the body as its `body` parameter, of the request's media type (without its parameters, such as
/// `charset`, as TorchServe passes it).
#[must_use]
pub fn with_body(mut input: HandlerInput, body: Vec<u8>) -> HandlerInput {
    let content_type = input
        .headers
        .iter()
        .find(|(name, _)| name == CONTENT_TYPE.as_str())
        .map(|(_, value)| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    input.parts.push(Part { name: "body".into(), content_type, value: body });
    input
}

/// The handler's answer as the client gets it. A status out of HTTP's range is a 500 (as TorchServe's), and a
/// header the handler set that HTTP cannot carry is left out with a warning.
#[must_use]
pub fn reply_of(output: HandlerOutput) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(output.body)));
    let status = StatusCode::from_u16(output.status).ok().filter(|s| s.as_u16() <= 599);
    *response.status_mut() = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !output.reason.is_empty() {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(output.reason.into_bytes()) {
            response.extensions_mut().insert(reason);
        }
    }
    let content_type = output.content_type.map(|c| (CONTENT_TYPE.as_str().to_string(), c));
    for (name, value) in content_type.into_iter().chain(output.headers) {
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => tracing::warn!(header = %name, "the handler set a header HTTP cannot carry; left out"),
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_sets_status_reason_type_and_headers() {
        let reply = reply_of(HandlerOutput {
            status: 422,
            reason: "Unprocessable".into(),
            content_type: Some("text/plain".into()),
            headers: vec![("x-seen".into(), "3".into()), ("bad header".into(), "x".into())],
            body: b"no".to_vec(),
        });
        assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.headers()["content-type"], "text/plain");
        assert_eq!(reply.headers()["x-seen"], "3");
        assert_eq!(reply.headers().len(), 2, "the header HTTP cannot carry is left out");
        let reason = reply.extensions().get::<hyper::ext::ReasonPhrase>().expect("reason");
        assert_eq!(reason.as_bytes(), b"Unprocessable");
        assert_eq!(reply_of(HandlerOutput { status: 700, ..HandlerOutput::default() }).status(), 500);
    }

    #[test]
    fn the_body_goes_with_its_media_type() {
        let input = HandlerInput {
            headers: vec![("content-type".into(), "Application/JSON; charset=utf-8".into())],
            parts: vec![Part { name: "topk".into(), content_type: String::new(), value: b"3".to_vec() }],
        };
        let input = with_body(input, b"[1]".to_vec());
        assert_eq!(input.parts[0].name, "topk");
        assert_eq!(
            input.parts[1],
            Part { name: "body".into(), content_type: "application/json".into(), value: b"[1]".to_vec() }
        );
    }
}
