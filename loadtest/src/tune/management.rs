//! The management API calls the tuner makes: read a model's batch settings (TorchServe's describe,
//! `GET /models/{model}`) and change them on the live server (ferroserve's
//! `PUT /models/{model}?batch_size=N&max_batch_delay=MS`).

use std::time::Duration;

use hyper::Method;
use serde::Deserialize;

use crate::{
    client::{fetch, join_url, HttpClient, HttpError},
    units::trim_float,
};

/// A model's batch settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSetting {
    /// Largest batch.
    pub batch_size: u32,
    /// Longest wait for a batch to fill.
    pub max_batch_delay: Duration,
}

impl BatchSetting {
    /// The delay in milliseconds, as the API and config.properties write it (`2`, `0.5`).
    pub fn delay_ms_text(&self) -> String {
        trim_float(self.max_batch_delay.as_secs_f64() * 1e3, 3)
    }
}

/// The management API of one model.
#[derive(Debug, Clone)]
pub struct Management {
    client: HttpClient,
    base: String,
    path: String,
    version: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Description {
    #[serde(default)]
    model_version: Option<serde_json::Value>,
    batch_size: Option<u32>,
    max_batch_delay: Option<f64>,
}

impl Management {
    /// The API at `base` (e.g. `http://127.0.0.1:8081`) for `model`, or one version of it, authorised with
    /// `key` when the server asks for one.
    pub fn new(client: HttpClient, base: &str, model: &str, version: Option<&str>, key: Option<String>) -> Self {
        let path = match version {
            Some(v) => format!("/models/{model}/{v}"),
            None => format!("/models/{model}"),
        };
        Self { client, base: base.to_string(), path, version: version.map(str::to_string), key }
    }

    /// Sets the batch size and delay; the server applies them to the next batch.
    ///
    /// # Errors
    /// [`HttpError`] when the call fails or is refused.
    pub async fn set(&self, setting: BatchSetting) -> Result<(), HttpError> {
        let query =
            format!("{}?batch_size={}&max_batch_delay={}", self.path, setting.batch_size, setting.delay_ms_text());
        fetch(&self.client, Method::PUT, &join_url(&self.base, &query)?, self.key.as_deref()).await.map(drop)
    }

    /// The current settings (of the version asked for, else the first listed).
    ///
    /// # Errors
    /// [`HttpError`] when the call fails; `Ok(None)` when the answer has no batch settings.
    pub async fn get(&self) -> Result<Option<BatchSetting>, HttpError> {
        let body = fetch(&self.client, Method::GET, &join_url(&self.base, &self.path)?, self.key.as_deref()).await?;
        Ok(parse_description(&body, self.version.as_deref()))
    }
}

fn parse_description(body: &[u8], version: Option<&str>) -> Option<BatchSetting> {
    let entries: Vec<Description> = serde_json::from_slice(body).ok()?;
    let matches = |d: &&Description| match (version, &d.model_version) {
        (None, _) => true,
        (Some(v), Some(serde_json::Value::String(s))) => s == v,
        (Some(v), Some(other)) => other.as_f64().is_some_and(|n| v.parse() == Ok(n)),
        (Some(_), None) => false,
    };
    let entry = entries.iter().find(matches)?;
    Some(BatchSetting {
        batch_size: entry.batch_size?,
        max_batch_delay: Duration::try_from_secs_f64(entry.max_batch_delay? / 1e3).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_answers_are_read() {
        let body = br#"[{"modelName":"signnet","modelVersion":"1.0","batchSize":16,"maxBatchDelay":2,
            "workers":[]},{"modelName":"signnet","modelVersion":"2.0","batchSize":4,"maxBatchDelay":0.5}]"#;
        let first = parse_description(body, None).expect("setting");
        assert_eq!(first.batch_size, 16);
        assert_eq!(first.max_batch_delay, Duration::from_millis(2));
        let second = parse_description(body, Some("2.0")).expect("setting");
        assert_eq!(second.delay_ms_text(), "0.5");
        assert_eq!(parse_description(b"{}", None), None);
    }
}
