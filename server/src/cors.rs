//! CORS as TorchServe answers it: when `cors_allowed_origin`, `cors_allowed_methods` or
//! `cors_allowed_headers` is set, every response of the HTTP APIs carries its value, as given, in
//! `Access-Control-Allow-Origin`, `-Methods` or `-Headers` (unless the handler set that header itself), and a
//! browser's preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered 200 with them
//! before the token check (browsers send no credentials on a preflight). Nothing is added when none is set.

use hyper::{
    header::{
        HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    },
    Method, Request,
};

/// The three keys, checked as header values when read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// `cors_allowed_origin`: `*` or an origin.
    pub allowed_origin: Option<HeaderValue>,
    /// `cors_allowed_methods`: e.g. `GET, POST, PUT, OPTIONS`.
    pub allowed_methods: Option<HeaderValue>,
    /// `cors_allowed_headers`: e.g. `X-Custom-Header, Content-Type`.
    pub allowed_headers: Option<HeaderValue>,
}

impl CorsConfig {
    /// Sets one of the three keys (`key` is its name in `config.properties`); an empty value turns it off, as in
    /// TorchServe.
    ///
    /// # Errors
    /// When the value cannot be an HTTP header value (a control character).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let slot = match key {
            "cors_allowed_origin" => &mut self.allowed_origin,
            "cors_allowed_methods" => &mut self.allowed_methods,
            "cors_allowed_headers" => &mut self.allowed_headers,
            other => return Err(format!("`{other}` is not a CORS key")),
        };
        *slot = if value.is_empty() {
            None
        } else {
            Some(HeaderValue::from_str(value).map_err(|_| format!("`{value}` cannot be an HTTP header value"))?)
        };
        Ok(())
    }

    /// Whether any key is set.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.pairs().next().is_some()
    }

    fn pairs(&self) -> impl Iterator<Item = (HeaderName, &HeaderValue)> {
        [
            (ACCESS_CONTROL_ALLOW_ORIGIN, &self.allowed_origin),
            (ACCESS_CONTROL_ALLOW_METHODS, &self.allowed_methods),
            (ACCESS_CONTROL_ALLOW_HEADERS, &self.allowed_headers),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    }

    /// Adds the configured headers the response does not have yet.
    pub fn decorate(&self, headers: &mut HeaderMap) {
        for (name, value) in self.pairs() {
            headers.entry(name).or_insert_with(|| value.clone());
        }
    }

    /// Whether `req` is a browser's preflight that this configuration answers (CORS on, `OPTIONS` with `Origin`
    /// and `Access-Control-Request-Method`).
    #[must_use]
    pub fn is_preflight<B>(&self, req: &Request<B>) -> bool {
        self.enabled()
            && req.method() == Method::OPTIONS
            && req.headers().contains_key(ORIGIN)
            && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origin: &str, methods: &str, headers: &str) -> CorsConfig {
        let mut c = CorsConfig::default();
        c.set("cors_allowed_origin", origin).expect("origin");
        c.set("cors_allowed_methods", methods).expect("methods");
        c.set("cors_allowed_headers", headers).expect("headers");
        c
    }

    #[test]
    fn off_unless_a_key_is_set() {
        let off = config("", "", "");
        assert!(!off.enabled());
        let mut headers = HeaderMap::new();
        off.decorate(&mut headers);
        assert!(headers.is_empty());
        let preflight =
            Request::options("/x").header(ORIGIN, "https://a").header(ACCESS_CONTROL_REQUEST_METHOD, "POST");
        assert!(!off.is_preflight(&preflight.body(()).expect("request")));
    }

    #[test]
    fn adds_each_set_header_as_given_without_replacing_the_handlers() {
        let c = config("https://app.example", "GET, POST", "");
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("PUT"));
        c.decorate(&mut headers);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], "PUT");
        assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_HEADERS));
    }

    #[test]
    fn a_preflight_needs_options_origin_and_the_requested_method() {
        let c = config("*", "", "");
        let req = |method: Method, origin: bool, asked: bool| {
            let mut b = Request::builder().method(method).uri("/predictions/m");
            if origin {
                b = b.header(ORIGIN, "https://a");
            }
            if asked {
                b = b.header(ACCESS_CONTROL_REQUEST_METHOD, "POST");
            }
            b.body(()).expect("request")
        };
        assert!(c.is_preflight(&req(Method::OPTIONS, true, true)));
        assert!(!c.is_preflight(&req(Method::OPTIONS, false, true)), "OPTIONS / is the API description");
        assert!(!c.is_preflight(&req(Method::OPTIONS, true, false)));
        assert!(!c.is_preflight(&req(Method::POST, true, true)));
    }

    #[test]
    fn a_value_that_cannot_be_a_header_is_refused() {
        let mut c = CorsConfig::default();
        assert!(c.set("cors_allowed_origin", "a\u{7}b").is_err());
    }
}
