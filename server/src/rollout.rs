//! The canary judge, Flagger's semantics as plain functions of what was observed: no clock, no locks, so that
//! every rule is tested directly. Each interval the canary's [`Window`] (its requests, 5xx answers and latency
//! histogram over the interval) is [`check`]ed against the default version's; [`next`] turns the verdict into
//! the step the rollout takes: grow the canary's share by `stepWeight`, promote it once a check passes at
//! `maxWeight`, or roll it back after `threshold` failed checks.

use ferroserve_engine::canary::Weight;

use crate::rollout_config::Analysis;

/// What one version answered over an interval (or since it was loaded, until [`Window::since`] takes a
/// difference): read from `ferroserve_request_latency_seconds` and `ferroserve_model_responses_total`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Requests answered, whatever their status.
    pub requests: u64,
    /// Of them, answered with a 5xx.
    pub errors: u64,
    /// The latency histogram: `(upper bound in seconds, cumulative count)`, ascending, without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl Window {
    /// What was answered after `earlier`, a window of the same series.
    #[must_use]
    pub fn since(&self, earlier: &Window) -> Window {
        let before = |i: usize| earlier.buckets.get(i).map_or(0, |&(_, n)| n);
        Window {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self.buckets.iter().enumerate().map(|(i, &(le, n))| (le, n.saturating_sub(before(i)))).collect(),
        }
    }

    /// The share of 5xx answers, in percent (0 without requests).
    #[must_use]
    pub fn error_percent(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.errors as f64 * 100.0 / self.requests as f64
    }

    /// The 99th percentile of the latency in seconds, interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without requests. Beyond the last bucket it is that bucket's bound
    /// (as `histogram_quantile` answers), or infinity when the last bucket holds fewer than 99 % of them.
    #[must_use]
    pub fn p99(&self) -> Option<f64> {
        if self.requests == 0 {
            return None;
        }
        let rank = 0.99 * self.requests as f64;
        let mut lower = (0.0, 0u64);
        for &(le, count) in &self.buckets {
            if count as f64 >= rank {
                let inside = (count - lower.1) as f64;
                let fraction = if inside > 0.0 { (rank - lower.1 as f64) / inside } else { 1.0 };
                return Some(lower.0 + (le - lower.0) * fraction);
            }
            lower = (le, count);
        }
        Some(f64::INFINITY)
    }
}

/// The verdict on one interval.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Within every bound.
    Passed,
    /// Out of a bound, or no live worker: why.
    Failed(String),
    /// Too few requests to tell: the share stays, and the check counts neither way.
    Inconclusive(String),
}

/// Judges the canary's interval `canary` against the default version's `primary`. A canary that cannot serve
/// (`live` false) fails whatever it answered.
#[must_use]
pub fn check(analysis: &Analysis, canary: &Window, primary: &Window, live: bool) -> Check {
    if !live {
        return Check::Failed("the canary has no live worker".into());
    }
    if canary.requests < analysis.min_requests {
        return Check::Inconclusive(format!(
            "{} requests, fewer than the {} a check needs",
            canary.requests, analysis.min_requests
        ));
    }
    let errors = canary.error_percent();
    if errors > analysis.max_error_percent {
        return Check::Failed(format!(
            "5xx on {errors:.2} % of {} requests, more than {} %",
            canary.requests, analysis.max_error_percent
        ));
    }
    let bound = primary.p99().filter(|p| p.is_finite()).map_or(analysis.max_p99, |p| {
        (p * analysis.p99_factor).max(analysis.max_p99) // The larger of the two bounds.
    });
    match canary.p99() {
        Some(p99) if p99 > bound => {
            Check::Failed(format!("p99 latency {:.1} ms above {:.1} ms", p99 * 1000.0, bound * 1000.0))
        }
        _ => Check::Passed,
    }
}

/// What a rollout does after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes (an inconclusive check).
    Hold,
    /// A failed check, not yet the last one allowed: the count so far.
    Failed(u32),
    /// The canary's share becomes this.
    Advance(Weight),
    /// The canary becomes the default version.
    Promote,
    /// The canary gets nothing any more: `threshold` checks failed.
    RollBack,
}

/// The step after `check`, for a canary at `weight` that has failed `failed` checks so far (Flagger counts
/// failed checks over the whole rollout: a passed check does not reset them).
#[must_use]
pub fn next(analysis: &Analysis, weight: Weight, failed: u32, check: &Check) -> Step {
    match check {
        Check::Inconclusive(_) => Step::Hold,
        Check::Failed(_) if failed + 1 >= analysis.threshold => Step::RollBack,
        Check::Failed(_) => Step::Failed(failed + 1),
        Check::Passed if weight >= analysis.max_weight => Step::Promote,
        Check::Passed => Step::Advance(weight.step_up(analysis.step_weight, analysis.max_weight)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BOUNDS: [f64; 5] = [0.005, 0.01, 0.05, 0.1, 0.5];

    fn analysis() -> Analysis {
        Analysis {
            interval: Duration::from_secs(60),
            threshold: 3,
            step_weight: Weight::from_percent(10.0).expect("10"),
            max_weight: Weight::from_percent(30.0).expect("30"),
            max_error_percent: 1.0,
            max_p99: 0.05,
            p99_factor: 2.0,
            min_requests: 10,
        }
    }

    /// `n` requests of which `errors` failed, each taking `seconds`.
    fn window(n: u64, errors: u64, seconds: f64) -> Window {
        let buckets = BOUNDS.iter().map(|&le| (le, if seconds <= le { n } else { 0 })).collect();
        Window { requests: n, errors, buckets }
    }

    #[test]
    fn p99_interpolates_within_its_bucket_and_windows_subtract() {
        let w = window(100, 0, 0.007);
        assert!((w.p99().expect("requests") - (0.005 + 0.005 * 0.99)).abs() < 1e-12);
        assert_eq!(window(0, 0, 0.0).p99(), None);
        assert_eq!(window(10, 0, 5.0).p99(), Some(f64::INFINITY), "slower than every bucket");
        let later = Window { requests: 150, errors: 5, buckets: BOUNDS.iter().map(|&le| (le, 150)).collect() };
        let delta = later.since(&window(100, 1, 0.007));
        assert_eq!((delta.requests, delta.errors), (50, 4));
        assert_eq!(delta.buckets[0], (0.005, 150), "the earlier window had none there");
        assert_eq!(delta.buckets[1], (0.01, 50));
        assert!((delta.error_percent() - 8.0).abs() < 1e-12);
    }

    #[test]
    fn a_check_needs_a_live_worker_enough_requests_few_errors_and_a_fast_p99() {
        let a = analysis();
        let fast = window(100, 0, 0.004);
        assert_eq!(check(&a, &fast, &fast, true), Check::Passed);
        assert!(matches!(check(&a, &fast, &fast, false), Check::Failed(why) if why.contains("no live worker")));
        assert!(matches!(check(&a, &window(9, 9, 9.0), &fast, true), Check::Inconclusive(_)));
        assert!(matches!(check(&a, &window(100, 2, 0.004), &fast, true), Check::Failed(why) if why.contains("5xx")));
        assert_eq!(check(&a, &window(100, 1, 0.004), &fast, true), Check::Passed, "1 % is allowed");
        // The p99 bound is the larger of 50 ms and twice the default's p99.
        assert!(matches!(check(&a, &window(100, 0, 0.09), &fast, true), Check::Failed(why) if why.contains("p99")));
        let slow_primary = window(100, 0, 0.09);
        assert_eq!(check(&a, &window(100, 0, 0.09), &slow_primary, true), Check::Passed);
        assert_eq!(check(&a, &window(100, 0, 0.04), &Window::default(), true), Check::Passed, "no default traffic");
    }

    #[test]
    fn passed_checks_step_up_to_the_maximum_then_promote() {
        let a = analysis();
        let w = |p: f64| Weight::from_percent(p).expect("weight");
        assert_eq!(next(&a, w(10.0), 0, &Check::Passed), Step::Advance(w(20.0)));
        assert_eq!(next(&a, w(25.0), 0, &Check::Passed), Step::Advance(w(30.0)), "capped at maxWeight");
        assert_eq!(next(&a, w(30.0), 2, &Check::Passed), Step::Promote);
        assert_eq!(next(&a, w(10.0), 0, &Check::Inconclusive(String::new())), Step::Hold);
    }

    #[test]
    fn threshold_failed_checks_roll_back() {
        let a = analysis();
        let failed = Check::Failed(String::new());
        let w = Weight::from_percent(10.0).expect("weight");
        assert_eq!(next(&a, w, 0, &failed), Step::Failed(1));
        assert_eq!(next(&a, w, 1, &failed), Step::Failed(2));
        assert_eq!(next(&a, w, 2, &failed), Step::RollBack);
    }

    /// A whole rollout on a script of verdicts: a good canary from 10 % is promoted after maxWeight / stepWeight
    /// checks; a bad one rolled back after threshold.
    #[test]
    fn whole_rollouts_take_the_documented_number_of_checks() {
        let a = analysis();
        let run = |verdict: Check| {
            let (mut weight, mut failed) = (a.step_weight, 0);
            for checks in 1..=100u32 {
                match next(&a, weight, failed, &verdict) {
                    Step::Advance(w) => weight = w,
                    Step::Failed(n) => failed = n,
                    Step::Hold => {}
                    end @ (Step::Promote | Step::RollBack) => return (end, checks),
                }
            }
            (Step::Hold, 100)
        };
        assert_eq!(run(Check::Passed), (Step::Promote, 3), "30 / 10 checks");
        assert_eq!(run(Check::Failed(String::new())), (Step::RollBack, 3), "threshold checks");
    }
}
