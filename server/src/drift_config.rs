//! The drift monitor's settings as `config.properties` states them (`drift_*` keys, ferroserve's own), checked
//! when the configuration is read. [`crate::drift`] runs the monitor.

use std::time::Duration;

/// Most requests a window or a reference taken from live traffic may hold: bounds the monitor's memory (a few
/// MB per model).
pub const MAX_WINDOW: usize = 100_000;

/// The drift monitor's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// Whether the server watches its models' inputs and predictions for drift (`drift_detection`, default true).
    pub enabled: bool,
    /// Requests that close a window (`drift_window_size`, default 1000).
    pub window_size: usize,
    /// Age that closes a window of at least `min_window_size` requests (`drift_window_seconds`, default 600).
    pub window_age: Duration,
    /// Fewest requests a window closed by its age is tested with (`drift_min_window_size`, default 100).
    pub min_window_size: usize,
    /// Requests taken as the reference of a model without a profile file (`drift_reference_size`, default
    /// 1000): its first ones after it loads.
    pub reference_size: usize,
    /// Rows the request path may hand over before the monitor reads them (`drift_queue_size`, default 8192);
    /// beyond it rows are dropped and counted, never waited for.
    pub queue_size: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_size: 1000,
            window_age: Duration::from_secs(600),
            min_window_size: 100,
            reference_size: 1000,
            queue_size: 8192,
        }
    }
}

impl DriftConfig {
    /// That the sizes fit together and within [`MAX_WINDOW`].
    ///
    /// # Errors
    /// The key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("drift_window_size", self.window_size),
            ("drift_reference_size", self.reference_size),
            ("drift_min_window_size", self.min_window_size),
        ] {
            if value > MAX_WINDOW {
                return Err((key, format!("{value} is above the limit of {MAX_WINDOW}")));
            }
        }
        if self.min_window_size > self.window_size {
            return Err((
                "drift_min_window_size",
                format!("{} is above drift_window_size ({})", self.min_window_size, self.window_size),
            ));
        }
        Ok(())
    }
}
