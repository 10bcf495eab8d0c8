//! The management API calls the tuner makes: read a model's batch settings (TorchServe's describe,
//! `GET /models/{model}`) and change them on the live server (ferroserve's
//! `PUT /models/{model}?batch_size=N&max_batch_delay=MS`, or `max_batch_delay=auto&slo_p99_ms=MS` for a model
//! that batches for a latency objective, which the tuner restores as it found it).

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

/// A model's batching as describe shows it: a fixed size and delay, or `"maxBatchDelay": "auto"` with the
/// objective `"sloP99Ms"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Batching {
    /// `batchSize` and `maxBatchDelay`.
    Fixed(BatchSetting),
    /// `batchSize`, and batches formed for a p99 objective.
    Auto {
        /// Largest batch.
        batch_size: u32,
        /// The objective, milliseconds.
        slo_p99_ms: f64,
    },
}

impl Batching {
    /// The query of the management call that sets it.
    fn query(&self) -> String {
        match self {
            Self::Fixed(s) => format!("batch_size={}&max_batch_delay={}", s.batch_size, s.delay_ms_text()),
            Self::Auto { batch_size, slo_p99_ms } => {
                format!("batch_size={batch_size}&max_batch_delay=auto&slo_p99_ms={}", trim_float(*slo_p99_ms, 3))
            }
        }
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
    /// Milliseconds, or `"auto"`.
    max_batch_delay: Option<serde_json::Value>,
    slo_p99_ms: Option<f64>,
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

    /// Sets the batching; the server applies it to the next batch.
    ///
    /// # Errors
    /// [`HttpError`] when the call fails or is refused.
    pub async fn set(&self, batching: Batching) -> Result<(), HttpError> {
        let query = format!("{}?{}", self.path, batching.query());
        fetch(&self.client, Method::PUT, &join_url(&self.base, &query)?, self.key.as_deref()).await.map(drop)
    }

    /// The current batching (of the version asked for, else the first listed).
    ///
    /// # Errors
    /// [`HttpError`] when the call fails; `Ok(None)` when the answer has no batch settings.
    pub async fn get(&self) -> Result<Option<Batching>, HttpError> {
        let body = fetch(&self.client, Method::GET, &join_url(&self.base, &self.path)?, self.key.as_deref()).await?;
        Ok(parse_description(&body, self.version.as_deref()))
    }
}

fn parse_description(body: &[u8], version: Option<&str>) -> Option<Batching> {
    let entries: Vec<Description> = serde_json::from_slice(body).ok()?;
    let matches = |d: &&Description| match (version, &d.model_version) {
        (None, _) => true,
        (Some(v), Some(serde_json::Value::String(s))) => s == v,
        (Some(v), Some(other)) => other.as_f64().is_some_and(|n| v.parse() == Ok(n)),
        (Some(_), None) => false,
    };
    let entry = entries.iter().find(matches)?;
    let batch_size = entry.batch_size?;
    match entry.max_batch_delay.as_ref()? {
        serde_json::Value::String(s) if s == "auto" => {
            Some(Batching::Auto { batch_size, slo_p99_ms: entry.slo_p99_ms? })
        }
        delay => {
            let max_batch_delay = Duration::try_from_secs_f64(delay.as_f64()? / 1e3).ok()?;
            Some(Batching::Fixed(BatchSetting { batch_size, max_batch_delay }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_answers_are_read() {
        let body = br#"[{"modelName":"signnet","modelVersion":"1.0","batchSize":16,"maxBatchDelay":2,
            "workers":[]},{"modelName":"signnet","modelVersion":"2.0","batchSize":4,"maxBatchDelay":0.5}]"#;
        let first = BatchSetting { batch_size: 16, max_batch_delay: Duration::from_millis(2) };
        assert_eq!(parse_description(body, None), Some(Batching::Fixed(first)));
        let Some(Batching::Fixed(second)) = parse_description(body, Some("2.0")) else { panic!("a fixed setting") };
        assert_eq!(second.delay_ms_text(), "0.5");
        assert_eq!(parse_description(b"{}", None), None);
    }

    #[test]
    fn an_objective_is_read_and_set_back_as_auto() {
        let body = br#"[{"modelName":"signnet","modelVersion":"1.0","batchSize":16,"maxBatchDelay":"auto",
            "sloP99Ms":25}]"#;
        let auto = parse_description(body, None).expect("setting");
        assert_eq!(auto, Batching::Auto { batch_size: 16, slo_p99_ms: 25.0 });
        assert_eq!(auto.query(), "batch_size=16&max_batch_delay=auto&slo_p99_ms=25");
        // "auto" without its objective, or any other word, is not a setting the tuner can restore.
        assert_eq!(parse_description(br#"[{"batchSize":16,"maxBatchDelay":"auto"}]"#, None), None);
        assert_eq!(parse_description(br#"[{"batchSize":16,"maxBatchDelay":"soon"}]"#, None), None);
        let fixed = Batching::Fixed(BatchSetting { batch_size: 8, max_batch_delay: Duration::from_micros(500) });
        assert_eq!(fixed.query(), "batch_size=8&max_batch_delay=0.5");
    }
}
