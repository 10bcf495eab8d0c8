//! Responses of each model by status class, `ferroserve_model_responses_total{model_name, model_version, device,
//! class}`: the availability SLI of the SLO rules ([`crate::slo`]), which need the 5xx of each model, not of the
//! whole API (`ferroserve_http_responses_total` has no model label).
//!
//! A model's `2xx`, `4xx` and `5xx` series exist at 0 from its first scrape (the metrics API creates them), so
//! that its error ratio is 0 rather than absent before its first error: an absent numerator would leave the SLO
//! rules without data.

use prometheus::{IntCounterVec, Opts, Registry};

/// The classes every model starts with.
pub const CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

/// The counter family, registered once.
#[derive(Clone)]
pub struct ModelResponses {
    counter: IntCounterVec,
}

impl ModelResponses {
    /// Registers `ferroserve_model_responses_total` in `registry`.
    ///
    /// # Errors
    /// When a family of that name is registered already.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = IntCounterVec::new(
            Opts::new(
                "ferroserve_model_responses_total",
                "Responses of each model to inference requests, by status class",
            ),
            &["model_name", "model_version", "device", "class"],
        )?;
        registry.register(Box::new(counter.clone()))?;
        Ok(Self { counter })
    }

    /// Creates the model's series at 0: call when a model is loaded or registered.
    pub fn add_model(&self, name: &str, version: &str, device: &str) {
        for class in CLASSES {
            self.counter.with_label_values(&[name, version, device, class]);
        }
    }

    /// Removes the model's series: call when it is unregistered, so that a removed model leaves no flat series.
    pub fn remove_model(&self, name: &str, version: &str, device: &str) {
        for class in CLASSES {
            // A class never created is not an error here.
            let _ = self.counter.remove_label_values(&[name, version, device, class]);
        }
    }

    /// The responses of the model counted in `class` (`5xx`, ...) so far.
    #[must_use]
    pub fn get(&self, name: &str, version: &str, device: &str, class: &str) -> u64 {
        self.counter.with_label_values(&[name, version, device, class]).get()
    }

    /// Counts one response of the model with HTTP status `status` (the status its client received, error or not).
    pub fn count(&self, name: &str, version: &str, device: &str, status: u16) {
        self.counter.with_label_values(&[name, version, device, class_of(status)]).inc();
    }
}

/// `2xx` for 200..=299 and so on; anything outside 100..=599 counts as a `5xx` (the server failed to say more).
fn class_of(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    fn exposition(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut out).expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    fn line(model: &str, class: &str, value: u64) -> String {
        format!(
            "ferroserve_model_responses_total{{class=\"{class}\",device=\"cpu\",model_name=\"{model}\",\
             model_version=\"1.0\"}} {value}"
        )
    }

    #[test]
    fn a_model_starts_with_every_class_at_zero() {
        let registry = Registry::new();
        let responses = ModelResponses::new(&registry).expect("register");
        assert!(!exposition(&registry).contains("ferroserve_model_responses_total{"), "nothing before a model");
        responses.add_model("m", "1.0", "cpu");
        let text = exposition(&registry);
        for class in CLASSES {
            assert!(text.contains(&line("m", class, 0)), "{text}");
        }
    }

    #[test]
    fn responses_are_counted_by_class_and_model() {
        let registry = Registry::new();
        let responses = ModelResponses::new(&registry).expect("register");
        responses.add_model("a", "1.0", "cpu");
        responses.add_model("b", "1.0", "cpu");
        for status in [200, 200, 503, 504, 400, 429, 500] {
            responses.count("a", "1.0", "cpu", status);
        }
        let text = exposition(&registry);
        for (model, class, value) in [("a", "2xx", 2), ("a", "4xx", 2), ("a", "5xx", 3), ("b", "5xx", 0)] {
            assert!(text.contains(&line(model, class, value)), "{model} {class} {value}: {text}");
        }
    }

    #[test]
    fn a_removed_model_leaves_no_series() {
        let registry = Registry::new();
        let responses = ModelResponses::new(&registry).expect("register");
        responses.add_model("a", "1.0", "cpu");
        responses.count("a", "1.0", "cpu", 200);
        responses.remove_model("a", "1.0", "cpu");
        assert!(!exposition(&registry).contains("model_name=\"a\""));
    }

    #[test]
    fn statuses_fall_into_their_class() {
        assert_eq!(class_of(200), "2xx");
        assert_eq!(class_of(404), "4xx");
        assert_eq!(class_of(504), "5xx");
        assert_eq!(class_of(0), "5xx");
        assert_eq!(class_of(302), "3xx");
    }
}
