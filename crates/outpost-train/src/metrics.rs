//! Detector quality measures: ROC-AUC, thresholds at a false-positive budget, rates.

/// Area under the ROC curve: the probability that a random anomalous score exceeds a random
/// normal one (ties count half), computed from ranks in O(n log n).
pub fn roc_auc(normal: &[f32], anomalous: &[f32]) -> f64 {
    if normal.is_empty() || anomalous.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f32, bool)> =
        normal.iter().map(|&s| (s, false)).chain(anomalous.iter().map(|&s| (s, true))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U: sum of the anomalous ranks, with tied groups sharing their mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let mean_rank = (i + j + 1) as f64 / 2.0; // ranks are 1-based: i+1 ..= j
        rank_sum += mean_rank * all[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let (n_pos, n_neg) = (anomalous.len() as f64, normal.len() as f64);
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// The smallest threshold among the scores such that at most `fpr` of `normal` lie strictly
/// above it; windows scoring above the threshold are anomalous.
pub fn threshold_at_fpr(normal: &[f32], fpr: f64) -> f32 {
    if normal.is_empty() {
        return f32::INFINITY;
    }
    let mut sorted = normal.to_vec();
    sorted.sort_by(f32::total_cmp);
    let allowed_above = (fpr.clamp(0.0, 1.0) * sorted.len() as f64).floor() as usize;
    sorted[sorted.len() - 1 - allowed_above.min(sorted.len() - 1)]
}

/// Fraction of `scores` strictly above `threshold`.
pub fn rate_above(scores: &[f32], threshold: f32) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_one_for_separated_half_for_identical_and_counts_ties_half() {
        assert_eq!(roc_auc(&[0.1, 0.2], &[0.3, 0.4]), 1.0);
        assert_eq!(roc_auc(&[0.3, 0.4], &[0.1, 0.2]), 0.0);
        assert_eq!(roc_auc(&[1.0, 1.0], &[1.0, 1.0]), 0.5);
        // One of four pairs is wrong: 0.75.
        assert_eq!(roc_auc(&[0.1, 0.5], &[0.4, 0.6]), 0.75);
    }

    #[test]
    fn threshold_leaves_at_most_the_budget_above_it() {
        let normal: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let t = threshold_at_fpr(&normal, 0.01);
        assert_eq!(t, 98.0);
        assert_eq!(rate_above(&normal, t), 0.01);
        assert_eq!(threshold_at_fpr(&normal, 0.0), 99.0);
        assert_eq!(rate_above(&normal, threshold_at_fpr(&normal, 0.05)), 0.05);
    }
}
