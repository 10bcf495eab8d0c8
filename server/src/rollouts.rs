//! The canary rollouts in progress, one per model name at most: who the canary is, how its analysis goes, and
//! what happened to it. The split itself lives in the engine's registry (its canary and weight); this module
//! changes it when a rollout starts, steps, is promoted or rolled back, judged by [`crate::rollout`] on
//! ferroserve's own histograms ([`ServerMetrics::window`]). [`Rollouts::drive`] judges each rollout with an
//! analysis every `interval`; every event is logged, counted in `ferroserve_canary_events_total` and kept (the
//! last [`EVENTS_KEPT`]) for the management API's description.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use ferroserve_engine::{
    canary::Weight,
    registry::{Canary, CanaryError},
    Registry,
};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::{sync::Notify, time::Instant};

use crate::{
    config::Config,
    metrics::ServerMetrics,
    rollout::{self, Check, Step, Window},
    rollout_config::{canary_weight, Analysis, AnalysisConfig},
};

/// Events kept per model for the description.
pub const EVENTS_KEPT: usize = 20;

/// Where a rollout stands (Flagger's phase names where they apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Under analysis: its share steps up until promotion or rollback.
    Progressing,
    /// A fixed share set by hand, without analysis.
    Manual,
    /// Promoted: the canary is the default version now.
    Succeeded,
    /// Rolled back by the analysis: it gets no traffic.
    Failed,
    /// Ended by hand, or by the canary's removal; it gets no traffic.
    Cleared,
}

/// One event of a rollout.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When, RFC 3339 (UTC, seconds).
    pub time: String,
    /// `started`, `advanced`, `failed_check`, `promoted`, `rolled_back`, `cleared`.
    pub event: &'static str,
    /// The canary's share after it, in percent.
    pub percent: f64,
    /// Why, for a person.
    pub message: String,
}

/// The rollout of one model as the description shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The canary version.
    pub version: String,
    /// Its share of the requests that name no version now, in percent.
    pub percent: f64,
    /// Where the rollout stands.
    pub phase: Phase,
    /// Failed checks so far.
    pub failed_checks: u32,
    /// The analysis settings, when the rollout has an analysis.
    pub analysis: Option<AnalysisView>,
    /// The verdict of the last check.
    pub last_check: Option<String>,
    /// The last events, oldest first.
    pub events: Vec<Event>,
}

/// [`Analysis`] in the units the configuration uses.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisView {
    interval: String,
    threshold: u32,
    step_weight: f64,
    max_weight: f64,
    max_error_percent: f64,
    max_p99_ms: f64,
    p99_factor: f64,
    min_requests: u64,
}

impl From<&Analysis> for AnalysisView {
    fn from(a: &Analysis) -> Self {
        Self {
            interval: humantime::format_duration(a.interval).to_string(),
            threshold: a.threshold,
            step_weight: a.step_weight.percent(),
            max_weight: a.max_weight.percent(),
            max_error_percent: a.max_error_percent,
            max_p99_ms: a.max_p99 * 1000.0,
            p99_factor: a.p99_factor,
            min_requests: a.min_requests,
        }
    }
}

struct Rollout {
    version: String,
    phase: Phase,
    failed: u32,
    analysis: Option<Analysis>,
    /// When the next check is due.
    due: Instant,
    /// The canary's and the default version's windows at the last check: a check judges what came after.
    baseline: (Window, Window),
    last_check: Option<String>,
    events: VecDeque<Event>,
}

/// Every model's rollout, and the analysis loop's wake-up call.
#[derive(Default)]
pub struct Rollouts {
    rollouts: Mutex<BTreeMap<String, Rollout>>,
    changed: Notify,
}

/// What a rollout works on: the models and the metrics they record into.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The models.
    pub registry: &'a Registry,
    /// Their metrics.
    pub metrics: &'a ServerMetrics,
}

impl Rollouts {
    /// No rollout.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the rollouts `config` states (`canaryPercent` and `canaryAnalysis` on a version in `models`) over
    /// the models loaded. A version that is not loaded, or is its model's default, is logged and skipped, as a
    /// model that fails to load is.
    pub fn start_configured(&self, config: &Config, scope: Scope<'_>) {
        for (name, versions) in &config.models {
            for (version, settings) in versions.iter() {
                let Some(percent) = settings.canary_percent else { continue };
                let analysis = settings.canary_analysis.as_ref().map(AnalysisConfig::resolve).transpose();
                let started =
                    canary_weight(percent).and_then(|weight| Ok((weight, analysis?))).and_then(|(weight, analysis)| {
                        self.start(scope, name, version, weight, analysis).map_err(|e| e.to_string())
                    });
                if let Err(error) = started {
                    tracing::error!(model = %name, version = %version, %error, "canary not started");
                }
            }
        }
    }

    /// Makes `version` the canary of `name` with `weight`, under `analysis` when given, replacing any rollout
    /// of `name` (its failed checks start from 0).
    ///
    /// # Errors
    /// [`CanaryError`] when there is no such model or version, or it is the default version.
    pub fn start(
        &self,
        scope: Scope<'_>,
        name: &str,
        version: &str,
        weight: Weight,
        analysis: Option<Analysis>,
    ) -> Result<(), CanaryError> {
        let mut rollouts = self.rollouts.lock();
        scope.registry.set_canary(name, version, weight)?;
        if let Some(replaced) = rollouts.get(name).filter(|r| r.version != version) {
            scope.metrics.canary.set(name, &replaced.version, 0.0, 0);
        }
        let interval = analysis.map_or(Duration::ZERO, |a| a.interval);
        let mut rollout = Rollout {
            version: version.to_string(),
            phase: if analysis.is_some() { Phase::Progressing } else { Phase::Manual },
            failed: 0,
            analysis,
            due: Instant::now() + interval,
            baseline: baseline(scope, name, version),
            last_check: None,
            events: VecDeque::new(),
        };
        let how = if analysis.is_some() { "under analysis" } else { "fixed, without analysis" };
        record(
            scope,
            name,
            &mut rollout,
            "started",
            weight,
            format!("canary {version} at {} %, {how}", weight.percent()),
        );
        rollouts.insert(name.to_string(), rollout);
        drop(rollouts);
        self.changed.notify_one();
        Ok(())
    }

    /// Ends the canary of `name` by hand: every request naming no version goes to the default again. Returns the
    /// canary version there was.
    pub fn clear(&self, scope: Scope<'_>, name: &str) -> Option<String> {
        let mut rollouts = self.rollouts.lock();
        let canary = scope.registry.clear_canary(name)?;
        if let Some(rollout) = rollouts.get_mut(name).filter(|r| r.version == canary.version) {
            rollout.phase = Phase::Cleared;
            record(scope, name, rollout, "cleared", Weight::ZERO, "cleared through the management API".into());
        }
        scope.metrics.canary.set(name, &canary.version, 0.0, 0);
        Some(canary.version)
    }

    /// Ends the rollout of `name` whose canary `version` was unregistered (the registry has ended its split).
    pub fn unregistered(&self, scope: Scope<'_>, name: &str, version: &str) {
        let mut rollouts = self.rollouts.lock();
        let live = |r: &&mut Rollout| r.version == version && matches!(r.phase, Phase::Progressing | Phase::Manual);
        if let Some(rollout) = rollouts.get_mut(name).filter(live) {
            rollout.phase = Phase::Cleared;
            record(scope, name, rollout, "cleared", Weight::ZERO, "the canary version was unregistered".into());
        }
    }

    /// Makes the canary `version` of `name` its default version by hand.
    ///
    /// # Errors
    /// [`CanaryError`] when there is no such model, or `version` is not its canary.
    pub fn promote(&self, scope: Scope<'_>, name: &str, version: &str) -> Result<(), CanaryError> {
        let mut rollouts = self.rollouts.lock();
        scope.registry.promote(name, version)?;
        if let Some(rollout) = rollouts.get_mut(name).filter(|r| r.version == version) {
            finish(scope, name, rollout, Phase::Succeeded, "promoted through the management API".into());
        }
        Ok(())
    }

    /// The rollout of `name` (the last one, when it has ended), if it had one.
    #[must_use]
    pub fn status(&self, registry: &Registry, name: &str) -> Option<Status> {
        let rollouts = self.rollouts.lock();
        let rollout = rollouts.get(name)?;
        let current = registry.canary(name).filter(|c| c.version == rollout.version);
        Some(Status {
            version: rollout.version.clone(),
            percent: current.map_or(0.0, |c| c.weight.percent()),
            phase: rollout.phase,
            failed_checks: rollout.failed,
            analysis: rollout.analysis.as_ref().map(AnalysisView::from),
            last_check: rollout.last_check.clone(),
            events: rollout.events.iter().cloned().collect(),
        })
    }

    /// Judges every rollout under analysis whose check is due at `now`; the next check of each is due an
    /// interval later.
    pub fn check_due(&self, scope: Scope<'_>, now: Instant) {
        self.check(scope, now, |due| due <= now);
    }

    /// Judges every rollout under analysis now, due or not (for tests that drive the analysis with the
    /// observations they make); the next check of each is due an interval from now.
    pub fn check_now(&self, scope: Scope<'_>) {
        self.check(scope, Instant::now(), |_| true);
    }

    fn check(&self, scope: Scope<'_>, now: Instant, is_due: impl Fn(Instant) -> bool) {
        let mut rollouts = self.rollouts.lock();
        for (name, rollout) in rollouts.iter_mut().filter(|(_, r)| r.phase == Phase::Progressing && is_due(r.due)) {
            if let Some(analysis) = rollout.analysis {
                rollout.due = now + analysis.interval;
                judge(scope, name, rollout, &analysis);
            }
        }
    }

    /// When the next check is due, if a rollout is under analysis.
    fn next_due(&self) -> Option<Instant> {
        let rollouts = self.rollouts.lock();
        rollouts.values().filter(|r| r.phase == Phase::Progressing).map(|r| r.due).min()
    }

    /// The analysis loop: judges each rollout when its check is due, until the task is dropped.
    pub async fn drive(self: Arc<Self>, registry: Arc<Registry>, metrics: Arc<ServerMetrics>) {
        loop {
            let scope = Scope { registry: &registry, metrics: &metrics };
            let changed = self.changed.notified();
            match self.next_due() {
                Some(due) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => self.check_due(scope, Instant::now()),
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// The windows of the canary and the default version of `name` now.
fn baseline(scope: Scope<'_>, name: &str, version: &str) -> (Window, Window) {
    let window =
        |version: Option<&str>| scope.registry.get(name, version).map(|m| scope.metrics.window(&m)).unwrap_or_default();
    (window(Some(version)), window(None))
}

/// One check of the rollout of `name`, and the step it leads to.
fn judge(scope: Scope<'_>, name: &str, rollout: &mut Rollout, analysis: &Analysis) {
    let current = scope.registry.canary(name).filter(|c| c.version == rollout.version);
    let (Some(Canary { weight, .. }), Some(canary)) = (current, scope.registry.get(name, Some(&rollout.version)))
    else {
        rollout.phase = Phase::Cleared;
        record(scope, name, rollout, "cleared", Weight::ZERO, "the canary was removed or replaced".into());
        return;
    };
    let before = std::mem::replace(&mut rollout.baseline, baseline(scope, name, &rollout.version));
    let (canary_now, primary_now) = &rollout.baseline;
    let verdict =
        rollout::check(analysis, &canary_now.since(&before.0), &primary_now.since(&before.1), canary.can_serve());
    let why = match &verdict {
        Check::Passed => "check passed".to_string(),
        Check::Failed(why) => format!("check failed: {why}"),
        Check::Inconclusive(why) => format!("check inconclusive: {why}"),
    };
    rollout.last_check = Some(why.clone());
    match rollout::next(analysis, weight, rollout.failed, &verdict) {
        Step::Hold => tracing::info!(model = %name, version = %rollout.version, "{why}"),
        Step::Failed(failed) => {
            rollout.failed = failed;
            let message = format!("{why} ({failed} of {})", analysis.threshold);
            record(scope, name, rollout, "failed_check", weight, message);
        }
        Step::Advance(next) => {
            if scope.registry.set_canary(name, &rollout.version, next).is_ok() {
                record(scope, name, rollout, "advanced", next, format!("{why}: share {} %", next.percent()));
            }
        }
        Step::Promote => {
            if scope.registry.promote(name, &rollout.version).is_ok() {
                finish(scope, name, rollout, Phase::Succeeded, format!("{why} at the maximum share: promoted"));
            }
        }
        Step::RollBack => {
            rollout.failed = analysis.threshold;
            scope.registry.clear_canary(name);
            let message = format!("{why}: {} checks failed, rolled back to 0 %", analysis.threshold);
            finish(scope, name, rollout, Phase::Failed, message);
        }
    }
}

/// Ends `rollout` in `phase` (promoted or rolled back), recording why.
fn finish(scope: Scope<'_>, name: &str, rollout: &mut Rollout, phase: Phase, message: String) {
    rollout.phase = phase;
    let event = if phase == Phase::Succeeded { "promoted" } else { "rolled_back" };
    record(scope, name, rollout, event, Weight::ZERO, message);
}

/// Logs, counts and keeps one event; the gauges follow the canary's share.
fn record(scope: Scope<'_>, name: &str, rollout: &mut Rollout, event: &'static str, weight: Weight, message: String) {
    let version = rollout.version.as_str();
    match event {
        "rolled_back" | "failed_check" => tracing::warn!(model = %name, version, event, "{message}"),
        _ => tracing::info!(model = %name, version, event, "{message}"),
    }
    scope.metrics.canary.event(name, version, event);
    scope.metrics.canary.set(name, version, weight.percent(), rollout.failed);
    if rollout.events.len() == EVENTS_KEPT {
        rollout.events.pop_front();
    }
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    rollout.events.push_back(Event { time, event, percent: weight.percent(), message });
}

#[cfg(test)]
mod tests {
    use ferroserve_engine::{backend::FakeBackend, BatchPolicy, Model, ModelOptions};
    use hyper::StatusCode;

    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    /// Versions 1.0 (default) and 2.0 of the fake model `m`, recording into fresh server metrics.
    fn models() -> (Arc<Registry>, Arc<ServerMetrics>) {
        let metrics = Arc::new(ServerMetrics::new(&Config::default()).expect("metrics"));
        let registry = Arc::new(Registry::new());
        for version in ["1.0", "2.0"] {
            let options = ModelOptions {
                name: "m".into(),
                version: version.into(),
                workers: 1,
                queue_size: 4,
                policy: BatchPolicy { max_batch_size: 1, max_delay: Duration::ZERO },
                response_timeout: Duration::from_secs(5),
            };
            let model =
                Model::start_with(Arc::new(FakeBackend::scalar()), options, &metrics.engine).expect("the fake starts");
            assert!(registry.register(model).is_ok());
        }
        (registry, metrics)
    }

    fn analysis() -> Analysis {
        let config = AnalysisConfig {
            interval: Some("10s".into()),
            threshold: Some(3),
            step_weight: Some(10.0),
            max_weight: Some(30.0),
            max_p99_ms: Some(50.0),
            min_requests: Some(10),
            ..AnalysisConfig::default()
        };
        config.resolve().expect("valid")
    }

    /// Records `n` requests to `version` answered with `status` after `took`, as the handlers record them.
    fn observe(scope: Scope<'_>, version: &str, n: usize, status: StatusCode, took: Duration) {
        let model = scope.registry.get("m", Some(version)).expect("loaded");
        for _ in 0..n {
            scope.metrics.observe_request(&model, None, status, took);
        }
    }

    /// One interval of traffic: the default version answers well, the canary as given; then the loop's check.
    async fn interval(scope: Scope<'_>, canary: StatusCode, canary_took: Duration) {
        observe(scope, "1.0", 90, StatusCode::OK, Duration::from_millis(2));
        observe(scope, "2.0", 20, canary, canary_took);
        // Just past the check: with the clock paused, the loop's timer fires first, then this one.
        tokio::time::sleep(INTERVAL).await;
    }

    fn phase(rollouts: &Rollouts, registry: &Registry) -> (Phase, f64, u32) {
        let status = rollouts.status(registry, "m").expect("a rollout");
        (status.phase, status.percent, status.failed_checks)
    }

    /// Starts the analysis loop over `registry` and a rollout of 2.0 at 10 %, a millisecond before a check, so
    /// that each [`interval`] ends just after one.
    async fn rolling(registry: &Arc<Registry>, metrics: &Arc<ServerMetrics>) -> Arc<Rollouts> {
        let rollouts = Arc::new(Rollouts::new());
        tokio::spawn(Arc::clone(&rollouts).drive(Arc::clone(registry), Arc::clone(metrics)));
        let scope = Scope { registry, metrics };
        let ten = Weight::from_percent(10.0).expect("10 %");
        rollouts.start(scope, "m", "2.0", ten, Some(analysis())).expect("started");
        tokio::time::sleep(Duration::from_millis(1)).await;
        rollouts
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_canary_is_rolled_back_after_threshold_intervals() {
        let (registry, metrics) = models();
        let rollouts = rolling(&registry, &metrics).await;
        let scope = Scope { registry: &registry, metrics: &metrics };
        interval(scope, StatusCode::INTERNAL_SERVER_ERROR, Duration::from_millis(1)).await;
        assert_eq!(phase(&rollouts, &registry), (Phase::Progressing, 10.0, 1));
        interval(scope, StatusCode::INTERNAL_SERVER_ERROR, Duration::from_millis(1)).await;
        assert_eq!(phase(&rollouts, &registry), (Phase::Progressing, 10.0, 2));
        interval(scope, StatusCode::INTERNAL_SERVER_ERROR, Duration::from_millis(1)).await;
        assert_eq!(phase(&rollouts, &registry), (Phase::Failed, 0.0, 3), "rolled back within interval x threshold");
        assert_eq!(registry.canary("m"), None, "no request reaches the canary any more");
        let status = rollouts.status(&registry, "m").expect("kept");
        let last = status.events.last().expect("events");
        assert_eq!(last.event, "rolled_back");
        assert!(last.message.contains("5xx"), "{}", last.message);
        let exposition = String::from_utf8(metrics.render(&["ferroserve_canary_events_total"])).expect("UTF-8");
        assert!(exposition.contains(r#"event="rolled_back",model_name="m",model_version="2.0"} 1"#), "{exposition}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_canary_is_rolled_back_too() {
        let (registry, metrics) = models();
        let rollouts = rolling(&registry, &metrics).await;
        let scope = Scope { registry: &registry, metrics: &metrics };
        for _ in 0..3 {
            interval(scope, StatusCode::OK, Duration::from_millis(200)).await;
        }
        let status = rollouts.status(&registry, "m").expect("a rollout");
        assert_eq!(status.phase, Phase::Failed);
        assert!(status.events.iter().any(|e| e.message.contains("p99 latency")), "{:?}", status.events);
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_canary_steps_up_and_is_promoted_after_max_over_step_intervals() {
        let (registry, metrics) = models();
        let rollouts = rolling(&registry, &metrics).await;
        let scope = Scope { registry: &registry, metrics: &metrics };
        interval(scope, StatusCode::OK, Duration::from_millis(2)).await;
        assert_eq!(phase(&rollouts, &registry), (Phase::Progressing, 20.0, 0));
        interval(scope, StatusCode::OK, Duration::from_millis(2)).await;
        assert_eq!(phase(&rollouts, &registry), (Phase::Progressing, 30.0, 0));
        interval(scope, StatusCode::OK, Duration::from_millis(2)).await;
        assert_eq!(phase(&rollouts, &registry).0, Phase::Succeeded, "promoted after 30 / 10 intervals");
        assert_eq!(registry.get("m", None).expect("default").version(), "2.0");
        assert_eq!(registry.canary("m"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_requests_hold_the_share_and_count_neither_way() {
        let (registry, metrics) = models();
        let rollouts = rolling(&registry, &metrics).await;
        let scope = Scope { registry: &registry, metrics: &metrics };
        observe(scope, "2.0", 9, StatusCode::INTERNAL_SERVER_ERROR, Duration::from_millis(1));
        tokio::time::sleep(INTERVAL).await;
        assert_eq!(phase(&rollouts, &registry), (Phase::Progressing, 10.0, 0));
        let status = rollouts.status(&registry, "m").expect("a rollout");
        assert!(status.last_check.is_some_and(|c| c.contains("inconclusive")));
    }

    #[test]
    fn configured_canaries_start_and_bad_ones_are_skipped() {
        let (registry, metrics) = models();
        let mut config = Config::default();
        let models = r#"{"m": {"2.0": {"canaryPercent": 25, "canaryAnalysis": {"interval": "30s"}}},
                         "gone": {"1.0": {"canaryPercent": 5}}}"#;
        config.apply(vec![("models".into(), models.into(), None)]).expect("valid models");
        let rollouts = Rollouts::new();
        rollouts.start_configured(&config, Scope { registry: &registry, metrics: &metrics });
        let status = rollouts.status(&registry, "m").expect("started");
        assert_eq!((status.phase, status.percent, status.version.as_str()), (Phase::Progressing, 25.0, "2.0"));
        assert_eq!(status.analysis.expect("analysis").interval, "30s");
        assert!(rollouts.status(&registry, "gone").is_none());
    }

    #[test]
    fn clearing_and_promoting_by_hand_are_recorded() {
        let (registry, metrics) = models();
        let rollouts = Rollouts::new();
        let scope = Scope { registry: &registry, metrics: &metrics };
        let half = Weight::from_percent(50.0).expect("50 %");
        rollouts.start(scope, "m", "2.0", half, None).expect("started");
        assert_eq!(phase(&rollouts, &registry), (Phase::Manual, 50.0, 0));
        rollouts.check_now(scope);
        assert_eq!(phase(&rollouts, &registry), (Phase::Manual, 50.0, 0), "no analysis, no step");
        assert_eq!(rollouts.clear(scope, "m").as_deref(), Some("2.0"));
        assert_eq!(phase(&rollouts, &registry), (Phase::Cleared, 0.0, 0));
        rollouts.start(scope, "m", "2.0", half, None).expect("started again");
        assert!(rollouts.promote(scope, "m", "1.0").is_err(), "1.0 is not the canary");
        rollouts.promote(scope, "m", "2.0").expect("promoted");
        assert_eq!(phase(&rollouts, &registry).0, Phase::Succeeded);
        let events: Vec<_> = rollouts.status(&registry, "m").expect("kept").events.iter().map(|e| e.event).collect();
        assert_eq!(events, ["started", "promoted"], "a new rollout starts a new history");
    }
}
