//! The drift statistics, as pure functions over counts and sorted samples: quantile bin edges, the Population
//! Stability Index with ε-smoothing, the Jensen-Shannon distance, the two-sample Kolmogorov-Smirnov D with its
//! asymptotic p-value, and Pearson's chi-squared goodness of fit. Each is checked against scipy (or, for PSI, a
//! formula written out by hand) on committed fixtures in `server/tests/fixtures/drift/`.

/// What stands for an empty bin's proportion in the PSI (Evidently's choice), so that `ln(0)` never occurs.
pub const PSI_EPSILON: f64 = 1e-4;

/// The `q`-quantile (0..=1) of `sorted`, interpolated linearly between order statistics (numpy's default);
/// `None` for an empty sample.
#[must_use]
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    #[allow(clippy::cast_precision_loss)]
    let pos = q.clamp(0.0, 1.0) * last as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let low = pos.floor() as usize;
    let high = (low + 1).min(last);
    #[allow(clippy::cast_precision_loss)]
    let w = pos - low as f64;
    Some(sorted[low] + (sorted[high] - sorted[low]) * w)
}

/// The inner edges of `bins` equal-frequency bins of `sorted` (the 1/bins, 2/bins... quantiles), duplicates
/// removed, so that a discrete feature gets fewer, wider bins. Bin `i` of `k + 1` is `[edge[i-1], edge[i])`,
/// the first and last open-ended.
#[must_use]
pub fn quantile_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    let mut edges: Vec<f64> = (1..bins)
        .filter_map(|i| {
            #[allow(clippy::cast_precision_loss)]
            quantile(sorted, i as f64 / bins as f64)
        })
        .collect();
    edges.dedup_by(|a, b| a == b);
    edges
}

/// The bin of `x` among `edges` (see [`quantile_edges`]): how many edges are at or below it.
#[must_use]
pub fn bin_of(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|&e| e <= x)
}

/// Counts of `values` in the `edges.len() + 1` bins.
#[must_use]
pub fn bin_counts(edges: &[f64], values: impl IntoIterator<Item = f64>) -> Vec<u64> {
    let mut counts = vec![0; edges.len() + 1];
    for x in values {
        counts[bin_of(edges, x)] += 1;
    }
    counts
}

/// `counts` as proportions of their total (all 0 when the total is 0).
#[must_use]
pub fn proportions(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    #[allow(clippy::cast_precision_loss)]
    counts.iter().map(|&c| if total == 0 { 0.0 } else { c as f64 / total as f64 }).collect()
}

/// The Population Stability Index of `current` against `reference` (counts over the same bins):
/// `Σ (a - e) ln(a / e)` over the proportions, an empty bin's proportion taken as [`PSI_EPSILON`].
/// Usual reading: under 0.1 no change, 0.1 to 0.25 moderate, above 0.25 significant.
#[must_use]
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    let smooth = |p: f64| if p == 0.0 { PSI_EPSILON } else { p };
    let (e, a) = (proportions(reference), proportions(current));
    e.iter().zip(&a).map(|(&e, &a)| (smooth(a) - smooth(e)) * (smooth(a) / smooth(e)).ln()).sum()
}

/// The Jensen-Shannon distance (natural logarithm, as `scipy.spatial.distance.jensenshannon`) between two
/// distributions given as counts or weights over the same bins: 0 for equal ones, at most `sqrt(ln 2)`.
#[must_use]
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp <= 0.0 || sq <= 0.0 {
        return 0.0;
    }
    let relative = |x: f64, m: f64| if x > 0.0 { x * (x / m).ln() } else { 0.0 };
    let mut divergence = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        divergence += relative(a, m) + relative(b, m);
    }
    (divergence / 2.0).max(0.0).sqrt()
}

/// The two-sample Kolmogorov-Smirnov statistic D: the largest distance between the empirical distribution
/// functions of two sorted samples (`scipy.stats.ks_2samp`'s statistic). 0 when either is empty.
#[must_use]
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0_f64);
    while i < a.len() && j < b.len() {
        // Step past every copy of the smaller value in both samples, so that ties move together.
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        #[allow(clippy::cast_precision_loss)]
        let gap = (i as f64 / n - j as f64 / m).abs();
        d = d.max(gap);
    }
    d
}

/// The asymptotic p-value of a two-sample KS statistic `d` for samples of sizes `n` and `m`: Kolmogorov's
/// limiting distribution at `sqrt(nm / (n + m)) d` (`scipy.stats.kstwobign.sf`).
#[must_use]
pub fn ks_pvalue(d: f64, n: usize, m: usize) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let en = (n as f64 * m as f64) / (n as f64 + m as f64);
    kolmogorov_sf(en.sqrt() * d)
}

/// The survival function of Kolmogorov's distribution, `P(K > x)`: the alternating series for `x >= 1`, and
/// one minus the Jacobi-theta form of the distribution function below, where the series would converge slowly.
#[must_use]
pub fn kolmogorov_sf(x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 1.0;
    }
    if x < 1.0 {
        let c = -PI * PI / (8.0 * x * x);
        let sum: f64 = (1..=20).map(|k| f64::from(2 * k - 1)).map(|odd| (c * odd * odd).exp()).sum();
        return (1.0 - (2.0 * PI).sqrt() / x * sum).clamp(0.0, 1.0);
    }
    let sum: f64 = (1..=100)
        .map(|k| {
            let k = f64::from(k);
            let sign = if k % 2.0 == 1.0 { 1.0 } else { -1.0 };
            sign * (-2.0 * k * k * x * x).exp()
        })
        .sum();
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Pearson's chi-squared statistic of `observed` counts against `expected` counts (same total), and its
/// p-value with `len - 1` degrees of freedom (`scipy.stats.chisquare`). Bins expected empty are left out (their
/// term would be infinite); smooth the expectation first to count them.
#[must_use]
pub fn chi_square(observed: &[f64], expected: &[f64]) -> (f64, f64) {
    let mut statistic = 0.0;
    let mut bins = 0_u32;
    for (&o, &e) in observed.iter().zip(expected) {
        if e > 0.0 {
            statistic += (o - e) * (o - e) / e;
            bins += 1;
        }
    }
    if bins < 2 {
        return (statistic, 1.0);
    }
    (statistic, chi2_sf(statistic, f64::from(bins - 1)))
}

/// `P(X > x)` for a chi-squared variable with `dof` degrees of freedom: the regularised upper incomplete gamma
/// function `Q(dof / 2, x / 2)`.
#[must_use]
pub fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(dof / 2.0, x / 2.0)
}

/// The regularised upper incomplete gamma function `Q(a, x)`: its power series below `x = a + 1`, a continued
/// fraction (modified Lentz) above (Numerical Recipes' split, where each converges fast).
fn gamma_q(a: f64, x: f64) -> f64 {
    const EPS: f64 = 1e-15;
    const TINY: f64 = 1e-300;
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * EPS {
                break;
            }
        }
        return (1.0 - sum * log_prefix.exp()).clamp(0.0, 1.0);
    }
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..1000 {
        let an = -f64::from(i) * (f64::from(i) - a);
        b += 2.0;
        d = an * d + b;
        d = if d.abs() < TINY { TINY } else { d };
        c = b + an / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    (log_prefix.exp() * h).clamp(0.0, 1.0)
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, nine coefficients: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    use std::f64::consts::PI;
    if x < 0.5 {
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = G[1..].iter().enumerate().fold(G[0], |acc, (i, &g)| acc + g / (x + 1.0 + f64::from(i as u32)));
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn quantile_edges_split_a_sample_into_equal_counts() {
        let sorted: Vec<f64> = (0..100).map(f64::from).collect();
        let edges = quantile_edges(&sorted, 4);
        assert_eq!(edges, vec![24.75, 49.5, 74.25]);
        assert_eq!(bin_counts(&edges, sorted.iter().copied()), vec![25, 25, 25, 25]);
        // A constant feature has a single edge: two bins, everything at or above it.
        assert_eq!(quantile_edges(&[3.0; 10], 10), vec![3.0]);
        assert_eq!(bin_counts(&[3.0], [2.0, 3.0, 4.0]), vec![1, 2]);
        assert!(quantile_edges(&[], 10).is_empty());
    }

    #[test]
    fn psi_is_zero_for_equal_distributions_and_smooths_empty_bins() {
        assert!(close(psi(&[10, 20, 30], &[20, 40, 60]), 0.0, 1e-12));
        // Written out: a = (0.5, 0.5), e = (0.25, 0.75).
        let want = (0.5 - 0.25) * (0.5_f64 / 0.25).ln() + (0.5 - 0.75) * (0.5_f64 / 0.75).ln();
        assert!(close(psi(&[1, 3], &[2, 2]), want, 1e-12));
        let empty = psi(&[5, 5], &[10, 0]);
        assert!(empty.is_finite() && empty > 1.0, "{empty}");
    }

    #[test]
    fn jensen_shannon_is_bounded_by_sqrt_ln_2() {
        assert!(close(jensen_shannon(&[1.0, 2.0], &[2.0, 4.0]), 0.0, 1e-12));
        assert!(close(jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]), 2.0_f64.ln().sqrt(), 1e-12));
        assert_eq!(jensen_shannon(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn ks_statistic_moves_ties_together() {
        assert_eq!(ks_statistic(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(ks_statistic(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert!(close(ks_statistic(&[1.0, 1.0, 2.0, 2.0], &[1.0, 2.0, 2.0, 2.0]), 0.25, 1e-12));
        assert_eq!(ks_statistic(&[], &[1.0]), 0.0);
    }

    #[test]
    fn kolmogorov_sf_meets_its_textbook_values() {
        // The 5 % and 1 % critical values of Kolmogorov's distribution: 1.3581 and 1.6276.
        assert!(close(kolmogorov_sf(1.358_1), 0.05, 1e-4));
        assert!(close(kolmogorov_sf(1.627_6), 0.01, 1e-4));
        assert_eq!(kolmogorov_sf(0.0), 1.0);
        // The two forms agree where they meet.
        assert!(close(kolmogorov_sf(1.0 - 1e-12), kolmogorov_sf(1.0), 1e-9));
    }

    #[test]
    fn chi2_sf_meets_its_textbook_values() {
        // Critical values at 5 %: 3.841 (1 dof), 16.919 (9 dof); at 1 %: 21.666 (9 dof).
        assert!(close(chi2_sf(3.841_458_820_694_124, 1.0), 0.05, 1e-9));
        assert!(close(chi2_sf(16.918_977_604_620_45, 9.0), 0.05, 1e-9));
        assert!(close(chi2_sf(21.665_994_333_461_92, 9.0), 0.01, 1e-9));
        assert!(close(chi2_sf(2.0, 2.0), (-1.0_f64).exp(), 1e-12));
        assert!(close(ln_gamma(5.0), 24.0_f64.ln(), 1e-12));
    }
}
