//! Service level objectives per model, stated in `config.properties` and rendered as Prometheus rules.
//!
//! A model version's entry in `models={...}` may carry `"slo": {"availability": 99.9, "latency": {"objective":
//! 99, "thresholdMs": 25}, "periodDays": 30}`: 99.9 % of its requests answered without a 5xx, 99 % of them
//! within 25 ms, over 30 days. [`rules`] turns every such entry into recording rules (the error ratio of each SLI
//! over the windows the alerts need, the objective, the error budget and what is left of it) and the four
//! multiwindow multi-burn-rate alerts of Google's SRE workbook, named after Sloth's conventions
//! (`slo:sli_error:ratio_rate5m`, `slo:period_error_budget_remaining:ratio`, ...).
//!
//! A latency objective is read from the request-latency histogram's bucket at its threshold, so that bucket must
//! exist: [`latency_buckets`] gives the buckets the metrics must be registered with.

use std::fmt::Write as _;

use crate::{
    config::Config,
    slo_config::{LatencyObjective, SloConfig},
};

/// The windows the SLI error ratios are recorded over: every window of [`ALERTS`].
const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// One multiwindow burn-rate alert: it fires while the error ratio over both windows exceeds `burn_rate` times
/// the error budget (the SRE workbook's *Alerting on SLOs*, its recommended windows).
struct BurnAlert {
    severity: &'static str,
    long_window: &'static str,
    short_window: &'static str,
    /// As written in the expression and the labels.
    burn_rate: &'static str,
    /// The same, as a number.
    factor: f64,
}

const ALERTS: [BurnAlert; 4] = [
    BurnAlert { severity: "page", long_window: "1h", short_window: "5m", burn_rate: "14.4", factor: 14.4 },
    BurnAlert { severity: "page", long_window: "6h", short_window: "30m", burn_rate: "6", factor: 6.0 },
    BurnAlert { severity: "ticket", long_window: "1d", short_window: "2h", burn_rate: "3", factor: 3.0 },
    BurnAlert { severity: "ticket", long_window: "3d", short_window: "6h", burn_rate: "1", factor: 1.0 },
];

/// A latency threshold in seconds, computed as `metrics_latency_buckets_ms` is (milliseconds / 1000), so that
/// equal milliseconds give the same `f64` and the same `le` label.
fn threshold_seconds(latency: &LatencyObjective) -> f64 {
    latency.threshold_ms / 1000.0
}

/// The latency thresholds of every objective in `config` that `metrics_latency_buckets_ms` lacks, in seconds,
/// ascending and without repeats.
#[must_use]
pub fn extra_latency_buckets(config: &Config) -> Vec<f64> {
    let mut extra: Vec<f64> = objectives(config)
        .filter_map(|o| o.slo.latency.as_ref().map(threshold_seconds))
        .filter(|t| !config.latency_buckets.contains(t))
        .collect();
    extra.sort_by(f64::total_cmp);
    extra.dedup();
    extra
}

/// The buckets the latency histograms must be registered with: `metrics_latency_buckets_ms` plus a bucket at
/// every latency objective's threshold ([`extra_latency_buckets`]), ascending.
#[must_use]
pub fn latency_buckets(config: &Config) -> Vec<f64> {
    let mut buckets = config.latency_buckets.clone();
    buckets.extend(extra_latency_buckets(config));
    buckets.sort_by(f64::total_cmp);
    buckets
}

/// One model version that states objectives.
struct Stated<'a> {
    model: &'a str,
    version: &'a str,
    slo: &'a SloConfig,
}

fn objectives(config: &Config) -> impl Iterator<Item = Stated<'_>> {
    config.models.iter().flat_map(|(model, versions)| {
        versions.iter().filter_map(move |(version, m)| m.slo.as_ref().map(|slo| Stated { model, version, slo }))
    })
}

/// One SLI of one model version, ready to render.
struct Sli {
    /// `model-version-name`, unique in the file.
    id: String,
    /// `availability` or `latency`.
    name: &'static str,
    model: String,
    version: String,
    /// The objective as a ratio (0.999).
    objective: f64,
    period_days: u32,
    /// What the SLI counts as bad, for the alerts' descriptions.
    meaning: String,
    /// PromQL of the error ratio over `{{window}}`.
    error_ratio: String,
}

fn slis(config: &Config) -> Vec<Sli> {
    let mut out = Vec::new();
    for stated in objectives(config) {
        let selector = format!("model_name=\"{}\",model_version=\"{}\"", escape(stated.model), escape(stated.version));
        let period_days = stated.slo.period();
        let sli = |name: &'static str, objective: f64, meaning: String, error_ratio: String| Sli {
            id: slo_id(stated.model, stated.version, name),
            name,
            model: stated.model.to_string(),
            version: stated.version.to_string(),
            objective: objective / 100.0,
            period_days,
            meaning,
            error_ratio,
        };
        if let Some(percent) = stated.slo.availability {
            out.push(sli("availability", percent, "answered with a 5xx".into(), availability_ratio(&selector)));
        }
        if let Some(latency) = &stated.slo.latency {
            let meaning = format!("slower than {} ms", number(latency.threshold_ms));
            let ratio = latency_ratio(&selector, &threshold_seconds(latency).to_string());
            out.push(sli("latency", latency.objective, meaning, ratio));
        }
    }
    out
}

/// Requests answered with a 5xx over all requests answered (`ferroserve_model_responses_total{class}`).
fn availability_ratio(selector: &str) -> String {
    format!(
        "sum by (namespace) (rate(ferroserve_model_responses_total{{{selector},class=\"5xx\"}}[{{{{window}}}}]))\n\
         /\n\
         sum by (namespace) (rate(ferroserve_model_responses_total{{{selector}}}[{{{{window}}}}]))"
    )
}

/// Requests slower than the bucket `le` over all requests (`ferroserve_request_latency_seconds`).
fn latency_ratio(selector: &str, le: &str) -> String {
    let count =
        format!("sum by (namespace) (rate(ferroserve_request_latency_seconds_count{{{selector}}}[{{{{window}}}}]))");
    format!(
        "(\n  {count}\n  -\n  sum by (namespace) (rate(ferroserve_request_latency_seconds_bucket{{{selector},le=\"{le}\"}}\
         [{{{{window}}}}]))\n)\n/\n{count}"
    )
}

/// Renders the recording and alerting rules of every objective in `config` as a Prometheus rule file (YAML).
/// A configuration without objectives gives a file with no groups, which Prometheus accepts.
#[must_use]
pub fn rules(config: &Config) -> String {
    let slis = slis(config);
    let mut out = String::from(
        "# Generated by `ferroserve slo-rules` from the objectives (\"slo\") in config.properties' `models`.\n\
         # Do not edit: change the objectives and render again.\n",
    );
    if slis.is_empty() {
        out.push_str("groups: []\n");
        return out;
    }
    out.push_str("groups:\n");
    for sli in &slis {
        render_sli_group(&mut out, sli);
        render_meta_group(&mut out, sli);
        render_alert_group(&mut out, sli);
    }
    out
}

fn render_sli_group(out: &mut String, sli: &Sli) {
    let _ = writeln!(out, "  - name: {}", quote(&format!("ferroserve-slo-sli-recordings-{}", sli.id)));
    out.push_str("    rules:\n");
    for window in WINDOWS {
        record(
            out,
            &format!("slo:sli_error:ratio_rate{window}"),
            &sli.error_ratio.replace("{{window}}", window),
            sli,
            Some(window),
        );
    }
    let period = format!("{}d", sli.period_days);
    let five = format!("slo:sli_error:ratio_rate5m{{slo_id=\"{}\"}}", escape(&sli.id));
    let expr = format!("sum_over_time({five}[{period}])\n/ ignoring (slo_window)\ncount_over_time({five}[{period}])");
    record(out, &format!("slo:sli_error:ratio_rate{period}"), &expr, sli, Some(&period));
}

fn render_meta_group(out: &mut String, sli: &Sli) {
    let _ = writeln!(out, "  - name: {}", quote(&format!("ferroserve-slo-meta-recordings-{}", sli.id)));
    out.push_str("    rules:\n");
    let id = escape(&sli.id);
    let budget = format!("slo:error_budget:ratio{{slo_id=\"{id}\"}}");
    let join = "on (slo_id, slo_name, slo_service) group_left";
    let period = format!("{}d", sli.period_days);
    for (name, expr) in [
        ("slo:objective:ratio", format!("vector({})", number(sli.objective))),
        ("slo:error_budget:ratio", format!("vector(1 - {})", number(sli.objective))),
        ("slo:time_period:days", format!("vector({})", sli.period_days)),
        ("slo:current_burn_rate:ratio", format!("slo:sli_error:ratio_rate5m{{slo_id=\"{id}\"}}\n/ {join}\n{budget}")),
        (
            "slo:period_burn_rate:ratio",
            format!("slo:sli_error:ratio_rate{period}{{slo_id=\"{id}\"}}\n/ {join}\n{budget}"),
        ),
        ("slo:period_error_budget_remaining:ratio", format!("1 - slo:period_burn_rate:ratio{{slo_id=\"{id}\"}}")),
    ] {
        record(out, name, &expr, sli, None);
    }
}

fn render_alert_group(out: &mut String, sli: &Sli) {
    let _ = writeln!(out, "  - name: {}", quote(&format!("ferroserve-slo-alerts-{}", sli.id)));
    out.push_str("    rules:\n");
    let id = escape(&sli.id);
    let budget = number(1.0 - sli.objective);
    for alert in &ALERTS {
        let over = |window: &str| {
            format!(
                "max(slo:sli_error:ratio_rate{window}{{slo_id=\"{id}\"}} > ({} * {budget})) without (slo_window)",
                alert.burn_rate
            )
        };
        let _ = writeln!(out, "      - alert: {}", alert_name(sli.name));
        let _ = writeln!(out, "        expr: |-");
        for line in [over(alert.long_window), "and".to_string(), over(alert.short_window)] {
            let _ = writeln!(out, "          {line}");
        }
        out.push_str("        labels:\n");
        labels(out, sli, None, "          ");
        for (key, value) in [
            ("severity", alert.severity),
            ("long_window", alert.long_window),
            ("short_window", alert.short_window),
            ("burn_rate", alert.burn_rate),
        ] {
            let _ = writeln!(out, "          {key}: {}", quote(value));
        }
        out.push_str("        annotations:\n");
        let summary =
            format!("{} {}: the {} error budget burns {}x too fast", sli.model, sli.version, sli.name, alert.burn_rate);
        let lasts = f64::from(sli.period_days) / alert.factor;
        let description = format!(
            "Requests {} over the last {} and {}: at this rate the {}-day error budget of the {}% {} objective \
             lasts {lasts:.1} days.",
            sli.meaning,
            alert.long_window,
            alert.short_window,
            sli.period_days,
            number(sli.objective * 100.0),
            sli.name,
        );
        let _ = writeln!(out, "          summary: {}", quote(&summary));
        let _ = writeln!(out, "          description: {}", quote(&description));
    }
}

/// `FerroserveAvailabilityBudgetBurn`, `FerroserveLatencyBudgetBurn`.
fn alert_name(sli: &str) -> String {
    let mut chars = sli.chars();
    let capital: String = chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect();
    format!("Ferroserve{capital}BudgetBurn")
}

fn record(out: &mut String, name: &str, expr: &str, sli: &Sli, window: Option<&str>) {
    let _ = writeln!(out, "      - record: {name}");
    out.push_str("        expr: |-\n");
    for line in expr.lines() {
        let _ = writeln!(out, "          {line}");
    }
    out.push_str("        labels:\n");
    labels(out, sli, window, "          ");
}

fn labels(out: &mut String, sli: &Sli, window: Option<&str>, indent: &str) {
    for (key, value) in [
        ("slo_id", sli.id.as_str()),
        ("slo_service", "ferroserve"),
        ("slo_name", sli.name),
        ("model_name", sli.model.as_str()),
        ("model_version", sli.version.as_str()),
    ] {
        let _ = writeln!(out, "{indent}{key}: {}", quote(value));
    }
    if let Some(window) = window {
        let _ = writeln!(out, "{indent}slo_window: {}", quote(window));
    }
}

/// `model-version-name`, with every character outside `[A-Za-z0-9._-]` replaced by `_`.
fn slo_id(model: &str, version: &str, name: &str) -> String {
    format!("{model}-{version}-{name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect()
}

/// A PromQL string literal's content: backslashes, quotes and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A YAML double-quoted scalar.
fn quote(value: &str) -> String {
    format!("\"{}\"", escape(value))
}

/// A number for PromQL and for people: at most 10 decimals, without trailing zeros (0.001, not
/// 0.0010000000000000009).
fn number(x: f64) -> String {
    let text = format!("{x:.10}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ConfigError;

    fn config(text: &str) -> Result<Config, ConfigError> {
        Config::from_reader(text.as_bytes(), Path::new("test.properties"))
    }

    /// A configuration whose `models` is this JSON (set as a value, so that it may span lines).
    fn with_models(models: &str) -> Config {
        let mut config = Config::default();
        config.apply(vec![("models".into(), models.into(), None)]).unwrap_or_else(|e| panic!("{models}: {e}"));
        config
    }

    /// The rule names and the expression of each, in file order (a small reader for the generated layout).
    fn exprs_of(rules: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut in_expr = false;
        for line in rules.lines() {
            if let Some(name) = line.strip_prefix("      - record: ").or_else(|| line.strip_prefix("      - alert: ")) {
                out.push((name.to_string(), String::new()));
                in_expr = false;
            } else if line == "        expr: |-" {
                in_expr = true;
            } else if let (true, Some(text), Some(last)) = (in_expr, line.strip_prefix("          "), out.last_mut()) {
                last.1.push_str(text);
                last.1.push('\n');
            } else {
                in_expr = false;
            }
        }
        out
    }

    #[test]
    fn objectives_are_read_from_the_models_json_and_checked() {
        let c = with_models(
            r#"{"m": {"2.0": {"batchSize": 4, "slo": {"availability": 99.9, "latency": {"objective": 99, "thresholdMs": 20}, "periodDays": 28}}}}"#,
        );
        let slo = c.model_config("m", "2.0").and_then(|m| m.slo.clone()).expect("slo parsed");
        assert_eq!(slo.availability, Some(99.9));
        assert_eq!(slo.latency, Some(LatencyObjective { objective: 99.0, threshold_ms: 20.0 }));
        assert_eq!(slo.period_days, Some(28));
        for bad in [
            r#"{"availability": 100}"#,
            r#"{"availability": 0}"#,
            r#"{"latency": {"objective": 99, "thresholdMs": 0}}"#,
            r#"{"latency": {"objective": 101, "thresholdMs": 5}}"#,
            r#"{"availability": 99, "periodDays": 0}"#,
            r#"{"availability": 99, "window": 3}"#,
            r#"{}"#,
        ] {
            let err = config(&format!("models={{\"m\": {{\"1.0\": {{\"slo\": {bad}}}}}}}\n")).expect_err(bad);
            assert!(err.to_string().contains("`models`"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_threshold_between_buckets_gets_its_own_bucket() {
        let c = with_models(
            r#"{"a": {"1.0": {"slo": {"latency": {"objective": 99, "thresholdMs": 20}}}},
                "b": {"1.0": {"slo": {"latency": {"objective": 95, "thresholdMs": 25}}},
                      "2.0": {"slo": {"latency": {"objective": 90, "thresholdMs": 20}}}}}"#,
        );
        assert!(c.latency_buckets.contains(&0.025), "25 ms is a default bucket");
        assert_eq!(extra_latency_buckets(&c), vec![0.02], "20 ms once, 25 ms not again");
        let buckets = latency_buckets(&c);
        assert_eq!(buckets.len(), c.latency_buckets.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "ascending: {buckets:?}");
        // The rules read the bucket the histogram will have, spelt as the exposition spells it.
        let rules = rules(&c);
        assert!(rules.contains("le=\"0.02\""), "{rules}");
        assert!(rules.contains("le=\"0.025\""), "{rules}");
    }

    #[test]
    fn configured_buckets_in_milliseconds_match_thresholds_exactly() {
        let c = config(
            "metrics_latency_buckets_ms=0.3,7.5,33\n\
             models={\"m\": {\"1.0\": {\"slo\": {\"latency\": {\"objective\": 99, \"thresholdMs\": 7.5}}}}}\n",
        )
        .expect("config");
        assert!(extra_latency_buckets(&c).is_empty(), "{:?}", c.latency_buckets);
        let c = config("metrics_latency_buckets_ms=1\nmodels={\"m\": {\"1.0\": {\"slo\": {\"latency\": {\"objective\": 99, \"thresholdMs\": 0.3}}}}}\n")
            .expect("config");
        assert_eq!(latency_buckets(&c), vec![0.3 / 1000.0, 0.001]);
    }

    #[test]
    fn no_objectives_render_an_empty_rule_file() {
        let c = with_models(r#"{"m": {"1.0": {"batchSize": 2}}}"#);
        assert!(rules(&c).ends_with("groups: []\n"));
        assert!(extra_latency_buckets(&c).is_empty());
    }

    #[test]
    fn every_window_is_recorded_for_every_sli() {
        let c = with_models(
            r#"{"m": {"1.0": {"slo": {"availability": 99.5, "latency": {"objective": 99, "thresholdMs": 25}}}}}"#,
        );
        let rules = rules(&c);
        let exprs = exprs_of(&rules);
        for window in WINDOWS.iter().chain(&["30d"]) {
            let name = format!("slo:sli_error:ratio_rate{window}");
            assert_eq!(exprs.iter().filter(|(n, _)| *n == name).count(), 2, "{name} per SLI");
            let raw = exprs.iter().filter(|(n, e)| *n == name && e.contains(&format!("[{window}]"))).count();
            assert_eq!(raw, 2, "{name} reads its own window");
        }
        assert_eq!(rules.matches("slo_id: \"m-1.0-availability\"").count(), 8 + 6 + 4);
        assert_eq!(rules.matches("slo_id: \"m-1.0-latency\"").count(), 8 + 6 + 4);
        let availability = exprs.iter().find(|(n, _)| n == "slo:sli_error:ratio_rate1h").expect("1h");
        assert!(availability
            .1
            .contains(r#"ferroserve_model_responses_total{model_name="m",model_version="1.0",class="5xx"}[1h]"#));
        assert!(!rules.contains("{{window}}"), "every window placeholder is filled");
        assert!(rules.contains("vector(0.995)") && rules.contains("vector(1 - 0.995)") && rules.contains("vector(30)"));
    }

    #[test]
    fn the_four_burn_rate_alerts_follow_the_sre_workbook() {
        let c = with_models(r#"{"m": {"1.0": {"slo": {"availability": 99.9}}}}"#);
        let exprs = exprs_of(&rules(&c));
        let alerts: Vec<&String> =
            exprs.iter().filter(|(n, _)| n == "FerroserveAvailabilityBudgetBurn").map(|(_, e)| e).collect();
        assert_eq!(alerts.len(), 4);
        for (expr, (long, short, rate)) in
            alerts.iter().zip([("1h", "5m", "14.4"), ("6h", "30m", "6"), ("1d", "2h", "3"), ("3d", "6h", "1")])
        {
            let threshold = format!("> ({rate} * 0.001)");
            assert!(expr.contains(&format!("ratio_rate{long}{{")) && expr.contains(&format!("ratio_rate{short}{{")));
            assert_eq!(expr.matches(&threshold).count(), 2, "both windows over {rate}x: {expr}");
            assert!(expr.contains("\nand\n"), "{expr}");
        }
        let rules = rules(&c);
        assert_eq!(rules.matches("severity: \"page\"").count(), 2);
        assert_eq!(rules.matches("severity: \"ticket\"").count(), 2);
    }

    #[test]
    fn names_are_escaped_and_ids_sanitised() {
        let c = with_models(r#"{"a \"b\"": {"1/0": {"slo": {"availability": 99}}}}"#);
        let rules = rules(&c);
        assert!(rules.contains(r#"model_name="a \"b\"",model_version="1/0""#), "{rules}");
        assert!(rules.contains(r#"slo_id: "a__b_-1_0-availability""#), "{rules}");
        assert!(rules.contains(r#"model_name: "a \"b\"""#), "{rules}");
    }

    #[test]
    fn the_rendering_is_deterministic_and_ordered_by_model_and_version() {
        let text = r#"{"z": {"1.0": {"slo": {"availability": 99}}}, "a": {"2.0": {"slo": {"availability": 99}},
                       "1.0": {"slo": {"availability": 99}}}}"#;
        let rules = rules(&with_models(text));
        assert_eq!(rules, super::rules(&with_models(text)));
        let first = |id: &str| rules.find(id).unwrap_or(usize::MAX);
        assert!(first("a-1.0-") < first("a-2.0-") && first("a-2.0-") < first("z-1.0-"));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(1.0 - 0.999), "0.001");
        assert_eq!(number(0.995), "0.995");
        assert_eq!(number(30.0), "30");
        assert_eq!(number(99.9), "99.9");
    }

    /// The example under `deploy/` is this function's rendering of the Kubernetes configuration, so that the
    /// two cannot drift. `FERROSERVE_BLESS=1` writes the file instead of comparing.
    #[test]
    fn the_committed_example_rules_are_the_rendering_of_the_deploy_config() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config_path = root.join("deploy/kubernetes/base/config.properties");
        let rules_path = root.join("deploy/prometheus/slo-rules.yml");
        let config = Config::from_file(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let rendered = rules(&config);
        assert!(rendered.contains("signnet-1.0-availability") && rendered.contains("signnet-1.0-latency"));
        if std::env::var_os("FERROSERVE_BLESS").is_some() {
            std::fs::write(&rules_path, &rendered).unwrap_or_else(|e| panic!("{}: {e}", rules_path.display()));
        }
        let committed =
            std::fs::read_to_string(&rules_path).unwrap_or_else(|e| panic!("{}: {e}", rules_path.display()));
        assert!(
            committed == rendered,
            "{} is not the rendering of {}: run FERROSERVE_BLESS=1 cargo test -p ferroserve --lib slo",
            rules_path.display(),
            config_path.display()
        );
    }
}
