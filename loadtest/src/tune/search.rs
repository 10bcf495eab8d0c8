//! The rate search of one batch setting, as a plain state machine: double the rate while it is sustainable,
//! halve it while it is not, then bisect between the highest sustainable and the lowest unsustainable rate
//! until the bracket is narrow enough.

/// Bounds of the search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchConfig {
    /// First rate tried.
    pub start_rate: f64,
    /// Below this, the setting cannot meet the SLO at all.
    pub min_rate: f64,
    /// Never tried above this.
    pub max_rate: f64,
    /// Stop when (fail - pass) / fail is at most this.
    pub precision: f64,
}

/// Where the search stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSearch {
    config: SearchConfig,
    pass: Option<f64>,
    fail: Option<f64>,
}

/// Rates are tried at 3 significant figures, which keeps tables readable.
fn round_rate(rate: f64) -> f64 {
    if rate <= 0.0 {
        return rate;
    }
    let scale = 10f64.powi(2 - rate.log10().floor() as i32);
    (rate * scale).round() / scale
}

impl RateSearch {
    /// A search that has tried nothing yet.
    pub fn new(config: SearchConfig) -> Self {
        Self { config, pass: None, fail: None }
    }

    /// The next rate to try, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        let c = &self.config;
        let rate = match (self.pass, self.fail) {
            (None, None) => c.start_rate.clamp(c.min_rate, c.max_rate),
            (Some(pass), None) if pass >= c.max_rate => return None,
            (Some(pass), None) => (pass * 2.0).min(c.max_rate),
            (None, Some(fail)) if fail <= c.min_rate => return None,
            (None, Some(fail)) => (fail / 2.0).max(c.min_rate),
            (Some(pass), Some(fail)) if (fail - pass) / fail <= c.precision => return None,
            (Some(pass), Some(fail)) => (pass + fail) / 2.0,
        };
        let rounded = round_rate(rate);
        // Rounding must not land on a rate already decided, or the search would never end.
        let decided = |r: f64| self.pass == Some(r) || self.fail == Some(r);
        Some(if decided(rounded) { rate } else { rounded })
    }

    /// Records a trial's verdict.
    pub fn record(&mut self, rate: f64, sustainable: bool) {
        if sustainable {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The highest sustainable rate found.
    pub fn best(&self) -> Option<f64> {
        self.pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SearchConfig {
        SearchConfig { start_rate: 100.0, min_rate: 10.0, max_rate: 10_000.0, precision: 0.05 }
    }

    /// Runs the search against a server that sustains exactly `capacity`.
    fn search(capacity: f64) -> (Option<f64>, Vec<f64>) {
        let mut s = RateSearch::new(config());
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            assert!(tried.len() < 40, "the search ends");
            tried.push(rate);
            s.record(rate, rate <= capacity);
        }
        (s.best(), tried)
    }

    #[test]
    fn finds_the_capacity_within_the_precision() {
        for capacity in [15.0, 99.0, 130.0, 777.0, 4321.0] {
            let (best, tried) = search(capacity);
            let best = best.expect("some rate passes");
            assert!(best <= capacity && best >= capacity * 0.94, "{capacity}: {best} after {tried:?}");
        }
    }

    #[test]
    fn doubles_then_bisects() {
        let (_, tried) = search(300.0);
        assert_eq!(&tried[..3], &[100.0, 200.0, 400.0]);
        assert_eq!(tried[3], 300.0);
    }

    #[test]
    fn edges() {
        assert_eq!(search(5.0).0, None, "nothing passes above the minimum");
        assert_eq!(search(1e9).0, Some(10_000.0), "stops at the maximum");
    }

    #[test]
    fn rounding() {
        assert_eq!(round_rate(1234.5), 1230.0);
        assert_eq!(round_rate(56.78), 56.8);
    }
}
