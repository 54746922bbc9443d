//! The fitted detector: standardise the spectrum, learn how normal machines vary, and score how
//! far a window strays from that.
//!
//! A healthy machine's spectrum still moves a lot (speed, load, mounting, noise level), but it
//! moves in a few correlated ways. Principal components fitted on normal windows capture those
//! ways. A fault can show up two ways, and the score adds both, each scaled by its spread on
//! normal data: energy where normal variation never puts any (the reconstruction residual,
//! SPE or Q statistic), or normal kinds of variation pushed far beyond their normal range
//! (Hotelling's T squared on the whitened coordinates; a bearing impact train raises the
//! resonance band much like friction does, only more). Training needs only normal data, which
//! is what a fleet has plenty of.

use crate::TrainError;
use nalgebra::{DMatrix, SymmetricEigen};

/// Extra directions iterated beyond those wanted; they speed up convergence of the last ones.
const OVERSAMPLE: usize = 12;
/// Most subspace iterations; convergence usually takes far fewer.
const MAX_ITERATIONS: usize = 500;
/// Relative change of the wanted eigenvalues below which the iteration stops.
const TOLERANCE: f64 = 1e-10;

const MODEL: &str = "spectral PCA";
/// Quantile of the training residuals that maps to score 1.
pub const CALIBRATION_QUANTILE: f64 = 0.99;

/// Standardiser, principal subspace and calibration fitted on normal windows.
#[derive(Debug, Clone)]
pub struct SpectralPca {
    /// Per-feature mean of the training data.
    pub mean: Vec<f64>,
    /// Per-feature 1/std of the training data.
    pub inv_std: Vec<f64>,
    /// Orthonormal principal directions, `features x components`.
    pub basis: DMatrix<f64>,
    /// Per component: scale whose square weighs that coordinate in the Hotelling term.
    pub t2_scale: Vec<f64>,
    /// Weight of the reconstruction residual (SPE) term.
    pub spe_weight: f64,
    /// Combined statistic that maps to score 1 (the calibration quantile on training data).
    pub calibration: f64,
    /// Fraction of the standardised variance the kept components explain.
    pub explained: f64,
}

impl SpectralPca {
    /// Fits on `features` (one row per normal window), keeping the fewest components that
    /// explain `variance_kept` of the variance, at most `max_components`.
    pub fn fit(features: &DMatrix<f64>, variance_kept: f64, max_components: usize) -> Result<SpectralPca, TrainError> {
        let (rows, cols) = features.shape();
        if rows < 2 || cols == 0 {
            return Err(TrainError::Fit { model: MODEL, reason: format!("need at least 2 windows, got {rows}") });
        }
        let mean: Vec<f64> = (0..cols).map(|c| features.column(c).mean()).collect();
        let mut centred = features.clone();
        for (c, m) in mean.iter().enumerate() {
            centred.column_mut(c).add_scalar_mut(-m);
        }
        let mut inv_std = Vec::with_capacity(cols);
        for c in 0..cols {
            let std = (centred.column(c).norm_squared() / (rows - 1) as f64).sqrt();
            // A constant feature carries no information and would divide by zero in the graph.
            if std.is_nan() || std <= 1e-9 {
                return Err(TrainError::Fit {
                    model: MODEL,
                    reason: format!("feature {c} is constant in training data"),
                });
            }
            inv_std.push(1.0 / std);
            centred.column_mut(c).scale_mut(1.0 / std);
        }
        // `transpose() *` rather than `tr_mul`: only the plain product reaches the optimised GEMM.
        let covariance = centred.transpose() * &centred / (rows - 1) as f64;
        // Standardised features have unit variance, so the total variance is the trace.
        let total = covariance.trace();
        let (eigenvalues, eigenvectors) = leading_eigenpairs(&covariance, max_components.min(cols))?;
        let mut kept = 0;
        let mut explained = 0.0;
        while kept < eigenvalues.len() && explained < variance_kept * total {
            explained += eigenvalues[kept].max(0.0);
            kept += 1;
        }
        let kept = kept.max(1);
        let basis = eigenvectors.columns(0, kept).into_owned();
        let variances: Vec<f64> = eigenvalues[..kept].iter().map(|v| v.max(1e-12)).collect();
        let mut pca = SpectralPca {
            mean,
            inv_std,
            basis,
            t2_scale: variances.iter().map(|v| v.recip().sqrt()).collect(),
            spe_weight: 1.0,
            calibration: 1.0,
            explained: explained / total,
        };
        // Weigh each statistic by its spread on normal data so neither drowns the other.
        let (spe, t2) = pca.statistics(features);
        let (spe_std, t2_std) = (std_dev(&spe), std_dev(&t2));
        pca.spe_weight = 1.0 / spe_std.max(1e-12);
        for s in &mut pca.t2_scale {
            *s *= t2_std.max(1e-12).recip().sqrt();
        }
        let combined = pca.combined(features);
        pca.calibration = quantile(&combined, CALIBRATION_QUANTILE);
        if pca.calibration.is_nan() || pca.calibration <= 0.0 {
            return Err(TrainError::Fit { model: MODEL, reason: "training residuals are all zero".into() });
        }
        Ok(pca)
    }

    /// Number of principal components kept.
    pub fn components(&self) -> usize {
        self.basis.ncols()
    }

    /// Per row of `features`: squared reconstruction residual (SPE) and weighted squared
    /// coordinates in the principal subspace (Hotelling's T squared).
    pub fn statistics(&self, features: &DMatrix<f64>) -> (Vec<f64>, Vec<f64>) {
        let mut z = features.clone();
        for (c, (m, s)) in self.mean.iter().zip(&self.inv_std).enumerate() {
            z.column_mut(c).add_scalar_mut(-m);
            z.column_mut(c).scale_mut(*s);
        }
        let mut coords = &z * &self.basis;
        let residual = z - &coords * self.basis.transpose();
        for (k, s) in self.t2_scale.iter().enumerate() {
            coords.column_mut(k).scale_mut(*s);
        }
        let spe = residual.row_iter().map(|r| r.norm_squared()).collect();
        let t2 = coords.row_iter().map(|r| r.norm_squared()).collect();
        (spe, t2)
    }

    fn combined(&self, features: &DMatrix<f64>) -> Vec<f64> {
        let (spe, t2) = self.statistics(features);
        spe.iter().zip(&t2).map(|(s, t)| self.spe_weight * s + t).collect()
    }

    /// Calibrated anomaly score of each row: weighted SPE plus T squared, over the
    /// calibration, so 1 is the training data's calibration quantile.
    pub fn scores(&self, features: &DMatrix<f64>) -> Vec<f64> {
        self.combined(features).into_iter().map(|r| r / self.calibration).collect()
    }
}

/// The `count` largest eigenvalues (descending) and their eigenvectors (columns) of the
/// symmetric positive semi-definite `c`, by subspace iteration with Rayleigh-Ritz extraction.
///
/// A full eigendecomposition of the 387x387 covariance is generic nalgebra code that debug
/// builds leave unoptimised (about 19 s); this needs only matrix products, which nalgebra hands
/// to an optimised GEMM, plus a decomposition of a matrix of `count + OVERSAMPLE` rows.
fn leading_eigenpairs(c: &DMatrix<f64>, count: usize) -> Result<(Vec<f64>, DMatrix<f64>), TrainError> {
    let n = c.nrows();
    let width = (count + OVERSAMPLE).min(n);
    // A fixed pseudo-random start (an LCG), so the same data always gives the same model.
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let start = DMatrix::from_fn(n, width, |_, _| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    });
    let mut q = orthonormalise(start)?;
    let mut previous = vec![f64::INFINITY; count];
    for iteration in 0..MAX_ITERATIONS {
        let cq = c * &q;
        if iteration % 10 == 9 {
            let (values, _) = ritz(&q, &cq);
            let settled = values.iter().zip(&previous).all(|(v, p)| (v - p).abs() <= TOLERANCE * v.abs().max(1e-12));
            previous = values[..count].to_vec();
            if settled {
                break;
            }
        }
        q = orthonormalise(cq)?;
    }
    let cq = c * &q;
    let (values, vectors) = ritz(&q, &cq);
    Ok((values[..count].to_vec(), (q * vectors).columns(0, count).into_owned()))
}

/// Rayleigh-Ritz: eigenpairs of `c` restricted to the span of orthonormal `q`, descending.
fn ritz(q: &DMatrix<f64>, cq: &DMatrix<f64>) -> (Vec<f64>, DMatrix<f64>) {
    let projected = q.transpose() * cq;
    let symmetric = (&projected + projected.transpose()) * 0.5;
    let eigen = SymmetricEigen::new(symmetric);
    let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let values = order.iter().map(|&i| eigen.eigenvalues[i]).collect();
    let vectors = DMatrix::from_fn(order.len(), order.len(), |r, k| eigen.eigenvectors[(r, order[k])]);
    (values, vectors)
}

/// Orthonormal basis of the columns of `m` by Cholesky QR, done twice for accuracy.
fn orthonormalise(mut m: DMatrix<f64>) -> Result<DMatrix<f64>, TrainError> {
    for _ in 0..2 {
        let gram = m.transpose() * &m;
        let l_inv = gram.cholesky().and_then(|ch| ch.l().try_inverse()).ok_or_else(|| TrainError::Fit {
            model: MODEL,
            reason: "training spectra span too few directions".into(),
        })?;
        m *= l_inv.transpose();
    }
    Ok(m)
}

fn std_dev(values: &[f64]) -> f64 {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
}

/// Linear-interpolated quantile `q` (0..=1) of `values`; 0 for an empty slice.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_on_a_plane_reconstructs_exactly_and_points_off_it_do_not() {
        // Three features driven by two latent factors plus a little noise on the third.
        let rows = 400;
        let data = DMatrix::from_fn(rows, 3, |r, c| {
            let (a, b) = ((r as f64 * 0.37).sin(), (r as f64 * 0.11).cos());
            let tiny = 1e-3 * ((r * 7919 % 101) as f64 / 101.0 - 0.5);
            [a + b, a - b, 2.0 * a + tiny][c]
        });
        let pca = SpectralPca::fit(&data, 0.999, 8).expect("fit");
        assert_eq!(pca.components(), 2);
        assert!(pca.explained > 0.999);
        let normal = pca.scores(&data.rows(0, 50).into_owned());
        assert!(normal.iter().all(|&s| s < 2.0), "{normal:?}");
        let off_plane = DMatrix::from_row_slice(1, 3, &[0.0, 0.0, 1.0]);
        assert!(pca.scores(&off_plane)[0] > 100.0);
    }

    #[test]
    fn constant_features_are_reported_not_divided_by_zero() {
        let data = DMatrix::from_fn(10, 2, |r, c| if c == 0 { r as f64 } else { 4.0 });
        let err = SpectralPca::fit(&data, 0.9, 4).unwrap_err().to_string();
        assert!(err.contains("feature 1 is constant"), "{err}");
    }

    #[test]
    fn quantile_interpolates_between_order_statistics() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(&[5.0], 0.99), 5.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
