//! The observability keys of `config.properties` (ferroserve's own): where the access log goes, the format and
//! level of the server's log, and where OpenTelemetry traces are exported with what sampling ratio. A leaf:
//! [`crate::config`] hands it the keys it owns.

use std::path::PathBuf;

/// Where the access log goes (`access_log`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log (`off`, the default).
    #[default]
    Off,
    /// One line per request on standard output (`stdout`), apart from the server's own log on standard error.
    Stdout,
    /// One line per request appended to this file (any other value).
    File(PathBuf),
}

/// The format of the server's own log (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's human format (`text`, the default).
    #[default]
    Text,
    /// One JSON object per line (`json`), with the fields of the spans a line was written in.
    Json,
}

/// The observability settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ObsConfig {
    /// `access_log`: `off` (default), `stdout` or a file path.
    pub access_log: AccessLogTarget,
    /// `log_format`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `log_level`: an `EnvFilter` directive such as `info` (default) or `ferroserve=debug,info`; `RUST_LOG`
    /// wins over it.
    pub log_level: String,
    /// `otlp_endpoint`: the OTLP/gRPC collector traces go to (e.g. `http://127.0.0.1:4317`); none (default)
    /// turns tracing off. `OTEL_EXPORTER_OTLP_ENDPOINT` stands in when the key is not set.
    pub otlp_endpoint: Option<String>,
    /// `otlp_sampling_ratio`: the share of traces started here that are recorded, 0 to 1 (default 1); a
    /// client's `traceparent` decides for its own trace (parent-based sampling).
    pub otlp_sampling_ratio: f64,
}

impl Default for ObsConfig {
    fn default() -> Self {
        Self {
            access_log: AccessLogTarget::Off,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            otlp_endpoint: None,
            otlp_sampling_ratio: 1.0,
        }
    }
}

impl ObsConfig {
    /// The keys this struct reads.
    pub const KEYS: &'static [&'static str] =
        &["access_log", "log_format", "log_level", "otlp_endpoint", "otlp_sampling_ratio"];

    /// Sets `key` (one of [`Self::KEYS`]) to `value`.
    ///
    /// # Errors
    /// A message saying what the value should be.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "access_log" => self.access_log = parse_access_log(value)?,
            "log_format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(format!("`{other}` is not a log format: use text or json")),
                }
            }
            "log_level" => {
                tracing_subscriber::EnvFilter::try_new(value).map_err(|e| format!("not a log filter: {e}"))?;
                self.log_level = value.to_string();
            }
            "otlp_endpoint" => self.otlp_endpoint = parse_endpoint(value)?,
            "otlp_sampling_ratio" => self.otlp_sampling_ratio = parse_ratio(value)?,
            other => return Err(format!("{other} is not an observability key")),
        }
        Ok(())
    }

    /// The endpoint traces go to: `otlp_endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT` from `env`.
    #[must_use]
    pub fn endpoint(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        let from_env = || env("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|v| parse_endpoint(&v).ok().flatten());
        self.otlp_endpoint.clone().or_else(from_env)
    }
}

fn parse_access_log(value: &str) -> Result<AccessLogTarget, String> {
    Ok(match value {
        "" => return Err("empty: use off, stdout or a file path".into()),
        "off" | "false" => AccessLogTarget::Off,
        "stdout" => AccessLogTarget::Stdout,
        path => AccessLogTarget::File(PathBuf::from(path)),
    })
}

fn parse_endpoint(value: &str) -> Result<Option<String>, String> {
    match value {
        "" | "off" => Ok(None),
        url if url.starts_with("http://") || url.starts_with("https://") => Ok(Some(url.to_string())),
        other => Err(format!("`{other}` is not an http:// URL (e.g. http://127.0.0.1:4317)")),
    }
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("`{value}` is not a ratio between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_parses_its_values_and_names_what_is_wrong() {
        let mut config = ObsConfig::default();
        assert_eq!(config.access_log, AccessLogTarget::Off);
        config.set("access_log", "stdout").expect("stdout");
        assert_eq!(config.access_log, AccessLogTarget::Stdout);
        config.set("access_log", "/var/log/fs.log").expect("a path");
        assert_eq!(config.access_log, AccessLogTarget::File("/var/log/fs.log".into()));
        config.set("log_format", "json").expect("json");
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(config.set("log_format", "xml").expect_err("xml").contains("text or json"));
        assert!(config.set("log_level", "ferroserve=loud").is_err());
        config.set("otlp_sampling_ratio", "0.1").expect("a ratio");
        assert!((config.otlp_sampling_ratio - 0.1).abs() < 1e-12);
        assert!(config.set("otlp_sampling_ratio", "1.5").is_err());
        assert!(config.set("otlp_endpoint", "localhost:4317").expect_err("no scheme").contains("http://"));
    }

    #[test]
    fn the_key_wins_over_the_environment_which_stands_in_when_it_is_unset() {
        let env = |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4317".to_string());
        let mut config = ObsConfig::default();
        assert_eq!(config.endpoint(env).as_deref(), Some("http://collector:4317"));
        assert_eq!(config.endpoint(|_| None), None);
        config.set("otlp_endpoint", "http://127.0.0.1:4317").expect("a URL");
        assert_eq!(config.endpoint(env).as_deref(), Some("http://127.0.0.1:4317"));
    }
}
