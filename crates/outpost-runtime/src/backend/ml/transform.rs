//! `post_transform`: what classifiers and regressors do to their raw scores, in onnxruntime's
//! float arithmetic (its logistic is symmetric around 0, its probit uses a closed-form inverse
//! error function, and SOFTMAX_ZERO leaves zero scores at zero).

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// The `post_transform` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostTransform {
    /// Scores as they are.
    None,
    /// Softmax over a row.
    Softmax,
    /// Logistic function of each score.
    Logistic,
    /// Softmax over the non-zero scores of a row; zeros stay zero.
    SoftmaxZero,
    /// Inverse of the normal CDF of each score.
    Probit,
}

impl PostTransform {
    /// Parses the string form used by the opset-1 operators (default `NONE`).
    pub fn from_node(node: &NodeProto) -> TractResult<PostTransform> {
        Ok(match node.get_attr_opt::<&str>("post_transform")?.unwrap_or("NONE") {
            "NONE" => PostTransform::None,
            "SOFTMAX" => PostTransform::Softmax,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => bail!(
                "{}: post_transform `{other}` is not NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO or PROBIT",
                super::describe(node)
            ),
        })
    }

    /// Applies the transform to a row of two or more scores.
    pub fn apply(self, scores: &mut [f32]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            PostTransform::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
            PostTransform::Softmax => softmax(scores),
            PostTransform::SoftmaxZero => softmax_zero(scores),
        }
    }
}

/// How onnxruntime turns the single score of a two-class model into two columns (its
/// `add_second_class`), decided by the sign of the weights and the winning class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecondClass {
    /// Write the score alone.
    Absent,
    /// All weights are positive: the score is a probability, the columns are `[1 - s, s]`.
    Complement,
    /// Mixed weights: the score is a margin, the columns are `[-s, s]`, or with LOGISTIC
    /// `[logistic(-s), logistic(s)]`.
    Negated,
}

/// Writes the scores of one row into `out` (as long as the output row), expanding a lone score
/// into two columns as onnxruntime does. Columns the expansion does not reach are zero.
pub(crate) fn write_scores(scores: &mut [f32], post: PostTransform, second: SecondClass, out: &mut [f32]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    if scores.len() >= 2 {
        post.apply(scores);
        out.iter_mut().zip(scores.iter()).for_each(|(o, s)| *o = *s);
        return;
    }
    let Some(&s) = scores.first() else { return };
    let pair = match (post, second) {
        (PostTransform::Probit, _) => [probit(s), 0.0],
        (_, SecondClass::Complement) => [1.0 - s, s],
        (PostTransform::Logistic, SecondClass::Negated) => [logistic(-s), logistic(s)],
        (_, SecondClass::Negated) => [-s, s],
        (_, SecondClass::Absent) => [s, 0.0],
    };
    let n = if post == PostTransform::Probit || second == SecondClass::Absent { 1 } else { 2 };
    out.iter_mut().zip(&pair[..n]).for_each(|(o, s)| *o = *s);
}

/// `1 / (1 + e^-x)`, computed on `|x|` so it never overflows.
pub(crate) fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// `√2 · erf⁻¹(2x − 1)`.
pub(crate) fn probit(x: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * x - 1.0)
}

/// Winitzki's closed-form approximation of the inverse error function, as onnxruntime computes it.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

fn softmax(values: &mut [f32]) {
    let max = values.iter().fold(-f32::MAX, |m, v| if *v > m { *v } else { m });
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    values.iter_mut().for_each(|v| *v /= sum);
}

fn softmax_zero(values: &mut [f32]) {
    let max = values.iter().fold(-f32::MAX, |m, v| if *v > m { *v } else { m });
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        if *v > 0.0000001 || *v < -0.0000001 {
            *v = (*v - max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    values.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric_and_saturates_without_overflow() {
        assert!((logistic(0.0) - 0.5).abs() < 1e-7);
        assert!((logistic(2.0) + logistic(-2.0) - 1.0).abs() < 1e-7);
        assert_eq!(logistic(-1000.0), 0.0);
        assert_eq!(logistic(1000.0), 1.0);
    }

    #[test]
    fn probit_inverts_the_normal_cdf_to_three_decimals() {
        // Φ(1) = 0.841345, Φ(-0.5) = 0.308538.
        assert!((probit(0.841345) - 1.0).abs() < 2e-3, "{}", probit(0.841345));
        assert!((probit(0.308538) + 0.5).abs() < 2e-3, "{}", probit(0.308538));
        assert_eq!(probit(0.5), 0.0);
    }

    #[test]
    fn softmax_zero_keeps_zero_scores_at_zero() {
        let mut v = [0.0, 1.0, 2.0];
        PostTransform::SoftmaxZero.apply(&mut v);
        let (e1, e2) = (1.0f32.exp(), 2.0f32.exp());
        assert_eq!(v[0], 0.0);
        assert!((v[1] - e1 / (e1 + e2)).abs() < 1e-6 && (v[2] - e2 / (e1 + e2)).abs() < 1e-6, "{v:?}");
        let mut w = [0.0, 1.0, 2.0];
        PostTransform::Softmax.apply(&mut w);
        assert!((w[0] - 1.0 / (1.0 + e1 + e2)).abs() < 1e-6);
    }

    #[test]
    fn a_lone_score_becomes_two_columns_by_the_sign_of_the_weights() {
        let mut out = [9.0; 2];
        write_scores(&mut [0.25], PostTransform::Logistic, SecondClass::Complement, &mut out);
        assert_eq!(out, [0.75, 0.25]);
        write_scores(&mut [0.5], PostTransform::None, SecondClass::Negated, &mut out);
        assert_eq!(out, [-0.5, 0.5]);
        write_scores(&mut [0.5], PostTransform::Logistic, SecondClass::Negated, &mut out);
        assert_eq!(out, [logistic(-0.5), logistic(0.5)]);
        write_scores(&mut [0.5], PostTransform::None, SecondClass::Absent, &mut out);
        assert_eq!(out, [0.5, 0.0]);
    }
}
