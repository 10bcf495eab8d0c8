//! ferroserve's drift statistics against scipy's on committed data: `fixtures/drift/expected.json`, written by
//! `fixtures/drift/make_expected.py` (`make drift-fixtures`) with `scipy.stats.ks_2samp`, `kstwobign`,
//! `chisquare`, `chi2`, `scipy.spatial.distance.jensenshannon`, numpy's quantiles and a PSI written out by hand.
//! Every value must agree to 1e-6 (relative for p-values below 1e-3).

use ferroserve::drift::stats;
use serde_json::Value;

fn expected() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drift/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture is committed")).expect("JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array().expect("an array").iter().map(|x| x.as_u64().expect("a count")).collect()
}

fn assert_close(got: f64, want: f64, what: &str) {
    let tolerance = if want.abs() < 1e-3 { 1e-6 * want.abs() } else { 1e-6 * want.abs().max(1.0) };
    assert!((got - want).abs() <= tolerance, "{what}: ferroserve {got}, scipy {want}");
}

#[test]
fn kolmogorov_smirnov_matches_ks_2samp() {
    for (i, case) in expected()["ks"].as_array().expect("cases").iter().enumerate() {
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let d = stats::ks_statistic(&a, &b);
        assert_close(d, case["statistic"].as_f64().expect("D"), &format!("case {i}: D"));
        let p = stats::ks_pvalue(d, a.len(), b.len());
        assert_close(p, case["pvalue_asymptotic"].as_f64().expect("p"), &format!("case {i}: p-value"));
    }
}

#[test]
fn bins_psi_and_jensen_shannon_match_numpy_and_scipy() {
    for (i, case) in expected()["binned"].as_array().expect("cases").iter().enumerate() {
        let reference = floats(&case["reference"]);
        let edges = stats::quantile_edges(&reference, 10);
        let want_edges = floats(&case["edges"]);
        assert_eq!(edges.len(), want_edges.len(), "case {i}: edges");
        for (g, w) in edges.iter().zip(&want_edges) {
            assert_close(*g, *w, &format!("case {i}: edge"));
        }
        let reference_counts = stats::bin_counts(&edges, reference.iter().copied());
        let current_counts = stats::bin_counts(&edges, floats(&case["current"]));
        assert_eq!(reference_counts, counts(&case["reference_counts"]), "case {i}");
        assert_eq!(current_counts, counts(&case["current_counts"]), "case {i}");
        let psi = stats::psi(&reference_counts, &current_counts);
        assert_close(psi, case["psi"].as_f64().expect("psi"), &format!("case {i}: PSI"));
        let as_f64 = |c: &[u64]| c.iter().map(|&c| c as f64).collect::<Vec<_>>();
        let js = stats::jensen_shannon(&as_f64(&reference_counts), &as_f64(&current_counts));
        assert_close(js, case["jensenshannon"].as_f64().expect("js"), &format!("case {i}: Jensen-Shannon"));
    }
}

#[test]
fn chi_square_matches_chisquare() {
    for (i, case) in expected()["chi_square"].as_array().expect("cases").iter().enumerate() {
        let (statistic, p) = stats::chi_square(&floats(&case["observed"]), &floats(&case["expected"]));
        assert_close(statistic, case["statistic"].as_f64().expect("statistic"), &format!("case {i}: chi2"));
        assert_close(p, case["pvalue"].as_f64().expect("p"), &format!("case {i}: p-value"));
    }
}

#[test]
fn the_distributions_match_kstwobign_and_chi2() {
    let expected = expected();
    for case in expected["kolmogorov_sf"].as_array().expect("cases") {
        let x = case["x"].as_f64().expect("x");
        assert_close(stats::kolmogorov_sf(x), case["sf"].as_f64().expect("sf"), &format!("kstwobign.sf({x})"));
    }
    for case in expected["chi2_sf"].as_array().expect("cases") {
        let (x, dof) = (case["x"].as_f64().expect("x"), case["dof"].as_f64().expect("dof"));
        assert_close(stats::chi2_sf(x, dof), case["sf"].as_f64().expect("sf"), &format!("chi2.sf({x}, {dof})"));
    }
}
