//! How far a candidate's answer is from the serving model's on the same input, judged by what
//! the answer means (the manifest's task), not by its bytes: two classifiers agree when they
//! pick the same class even if their logits differ in the fifth decimal.
//!
//! Pure functions over typed predictions and f32 tensors; the shadow worker feeds them. Every
//! result is finite: a comparison that cannot produce a number (a NaN on one side only, shapes
//! or kinds that differ) is an error, which the shadow report counts instead of summing.

use outpost_proto::prediction::{BoundingBox, Prediction};

/// Relative tolerance of a raw or regression value against the serving one.
pub const RELATIVE_TOLERANCE: f64 = 1e-3;
/// Absolute tolerance added to the relative one, so values near zero compare sensibly.
pub const ABSOLUTE_TOLERANCE: f64 = 1e-5;
/// Boxes of the same class overlapping at least this much (intersection over union) match.
pub const IOU_MATCH: f32 = 0.5;

/// One request's comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// 0..1: 1 when the candidate answered the same (see the module docs per task).
    pub agreement: f64,
    /// Absolute difference of the primary score (top confidence, anomaly or event score, mean
    /// absolute difference of the first output).
    pub score_diff: f64,
}

/// Why two answers cannot be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    /// The answers are of different kinds (a classification against a detection).
    #[error("the candidate answered a {candidate} where the serving model answered a {serving}")]
    Kind {
        /// Kind the serving model answered.
        serving: &'static str,
        /// Kind the candidate answered.
        candidate: &'static str,
    },
    /// Different numbers of items, outputs or values.
    #[error("{what}: the serving model has {serving}, the candidate {candidate}")]
    Shape {
        /// What was counted.
        what: String,
        /// The serving model's count or shape.
        serving: String,
        /// The candidate's.
        candidate: String,
    },
    /// A score is NaN or infinite on one side only: no difference can be taken.
    #[error("{what} is not a finite number on one side")]
    NotFinite {
        /// Which value.
        what: String,
    },
}

/// One model output read as f32, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    /// The output's shape.
    pub shape: Vec<usize>,
    /// Its values.
    pub data: Vec<f32>,
}

fn kind(p: &Prediction) -> &'static str {
    match p {
        Prediction::Classification { .. } => "classification",
        Prediction::Detection { .. } => "detection",
        Prediction::Anomaly { .. } => "anomaly",
        Prediction::Event { .. } => "event",
        Prediction::Regression { .. } => "regression",
    }
}

/// Compares the predictions of one request item by item (images, audio or sensor windows) and
/// averages them; a request with no items agrees fully.
pub fn predictions(serving: &[Prediction], candidate: &[Prediction]) -> Result<Agreement, CompareError> {
    if serving.len() != candidate.len() {
        return Err(CompareError::Shape {
            what: "predictions".into(),
            serving: serving.len().to_string(),
            candidate: candidate.len().to_string(),
        });
    }
    if serving.is_empty() {
        return Ok(Agreement { agreement: 1.0, score_diff: 0.0 });
    }
    let mut sum = Agreement { agreement: 0.0, score_diff: 0.0 };
    for (s, c) in serving.iter().zip(candidate) {
        let one = prediction(s, c)?;
        sum.agreement += one.agreement;
        sum.score_diff += one.score_diff;
    }
    let n = serving.len() as f64;
    Ok(Agreement { agreement: sum.agreement / n, score_diff: sum.score_diff / n })
}

/// Compares one prediction of each model.
pub fn prediction(serving: &Prediction, candidate: &Prediction) -> Result<Agreement, CompareError> {
    let result = match (serving, candidate) {
        (Prediction::Classification { top: a }, Prediction::Classification { top: b }) => {
            match (a.first(), b.first()) {
                (None, None) => Agreement { agreement: 1.0, score_diff: 0.0 },
                (Some(x), None) | (None, Some(x)) => Agreement { agreement: 0.0, score_diff: f64::from(x.score).abs() },
                (Some(x), Some(y)) => Agreement {
                    agreement: f64::from(u8::from(x.index == y.index)),
                    score_diff: difference(x.score, y.score),
                },
            }
        }
        (Prediction::Detection { boxes: a }, Prediction::Detection { boxes: b }) => detections(a, b),
        (Prediction::Anomaly { score: a, anomalous: x, .. }, Prediction::Anomaly { score: b, anomalous: y, .. })
        | (Prediction::Event { score: a, detected: x, .. }, Prediction::Event { score: b, detected: y, .. }) => {
            Agreement { agreement: f64::from(u8::from(x == y)), score_diff: difference(*a, *b) }
        }
        (Prediction::Regression { values: a }, Prediction::Regression { values: b }) => {
            values("regression values", &[a.len()], a, &[b.len()], b)?
        }
        (s, c) => return Err(CompareError::Kind { serving: kind(s), candidate: kind(c) }),
    };
    finite(result, kind(serving))
}

/// Raw outputs (no task the agent can read them by): output by output, shape by shape, every
/// value within the tolerance; the score is the mean absolute difference of the first output.
pub fn tensors(serving: &[Values], candidate: &[Values]) -> Result<Agreement, CompareError> {
    if serving.len() != candidate.len() {
        return Err(CompareError::Shape {
            what: "outputs".into(),
            serving: serving.len().to_string(),
            candidate: candidate.len().to_string(),
        });
    }
    let mut result = Agreement { agreement: 1.0, score_diff: 0.0 };
    for (i, (s, c)) in serving.iter().zip(candidate).enumerate() {
        let one = values(&format!("output #{i}"), &s.shape, &s.data, &c.shape, &c.data)?;
        if i == 0 {
            result.score_diff = one.score_diff;
        }
        result.agreement = result.agreement.min(one.agreement);
    }
    finite(result, "outputs")
}

/// Values of one output: agreement 1 when each is within the tolerance of the serving one.
fn values(what: &str, s_shape: &[usize], s: &[f32], c_shape: &[usize], c: &[f32]) -> Result<Agreement, CompareError> {
    if s_shape != c_shape || s.len() != c.len() {
        return Err(CompareError::Shape {
            what: what.to_string(),
            serving: format!("{s_shape:?}"),
            candidate: format!("{c_shape:?}"),
        });
    }
    let mut within = true;
    let mut total = 0.0;
    for (&x, &y) in s.iter().zip(c) {
        let d = difference(x, y);
        within &= d == 0.0 || d <= ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * f64::from(x).abs();
        total += d;
    }
    let score_diff = if s.is_empty() { 0.0 } else { total / s.len() as f64 };
    Ok(Agreement { agreement: f64::from(u8::from(within)), score_diff })
}

/// |a - b|, with equal values (two NaNs, two equal infinities) 0 apart; NaN when only one side
/// is a number, which [`finite`] turns into an error.
fn difference(a: f32, b: f32) -> f64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        0.0
    } else {
        (f64::from(a) - f64::from(b)).abs()
    }
}

fn finite(a: Agreement, what: &str) -> Result<Agreement, CompareError> {
    if a.agreement.is_finite() && a.score_diff.is_finite() {
        Ok(a)
    } else {
        Err(CompareError::NotFinite { what: format!("a {what} score") })
    }
}

/// Greedy matching, best serving box first, each to the unmatched candidate box of its class
/// it overlaps most (at least [`IOU_MATCH`]). Agreement is matched / the larger box count (1
/// when neither model sees anything); the score is the mean score difference of matched pairs.
fn detections(serving: &[BoundingBox], candidate: &[BoundingBox]) -> Agreement {
    if serving.is_empty() && candidate.is_empty() {
        return Agreement { agreement: 1.0, score_diff: 0.0 };
    }
    let mut order: Vec<&BoundingBox> = serving.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut taken = vec![false; candidate.len()];
    let (mut matched, mut diff) = (0usize, 0.0);
    for s in order {
        let best = candidate
            .iter()
            .enumerate()
            .filter(|(j, c)| !taken[*j] && c.index == s.index)
            .map(|(j, c)| (j, iou(s, c)))
            .filter(|(_, overlap)| *overlap >= IOU_MATCH)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, _)) = best {
            taken[j] = true;
            matched += 1;
            diff += difference(s.score, candidate[j].score);
        }
    }
    let score_diff = if matched == 0 { 0.0 } else { diff / matched as f64 };
    Agreement { agreement: matched as f64 / serving.len().max(candidate.len()) as f64, score_diff }
}

/// Intersection over union of two boxes; 0 for empty or malformed (NaN) boxes.
fn iou(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = w * h;
    let area = |x: &BoundingBox| (x.x2 - x.x1).max(0.0) * (x.y2 - x.y1).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 && inter.is_finite() {
        inter / union
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::prediction::LabelScore;

    fn class(index: usize, score: f32) -> Prediction {
        Prediction::Classification { top: vec![LabelScore { index, label: None, score }] }
    }

    fn bx(index: usize, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> BoundingBox {
        BoundingBox { index, label: None, score, x1, y1, x2, y2 }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn classifiers_agree_on_the_same_top_class_and_differ_by_its_confidence() {
        let same = prediction(&class(3, 0.9), &class(3, 0.7)).unwrap();
        assert_eq!(same.agreement, 1.0);
        assert!(close(same.score_diff, 0.2), "{same:?}");
        let other = prediction(&class(3, 0.9), &class(4, 0.9)).unwrap();
        assert_eq!((other.agreement, other.score_diff), (0.0, 0.0));
    }

    #[test]
    fn detections_match_greedily_by_class_at_half_overlap() {
        let serving = [bx(0, 0.9, 0.0, 0.0, 10.0, 10.0), bx(1, 0.8, 20.0, 20.0, 30.0, 30.0)];
        // The same first box slightly moved (IoU 0.82), the second one with another class.
        let candidate = [bx(0, 0.7, 1.0, 0.0, 11.0, 10.0), bx(2, 0.8, 20.0, 20.0, 30.0, 30.0)];
        let a = prediction(
            &Prediction::Detection { boxes: serving.to_vec() },
            &Prediction::Detection { boxes: candidate.to_vec() },
        )
        .unwrap();
        assert_eq!(a.agreement, 0.5);
        assert!(close(a.score_diff, 0.2), "{a:?}");
        // A box overlapping less than half does not match.
        let far = [bx(0, 0.9, 6.0, 0.0, 16.0, 10.0)];
        let a = prediction(
            &Prediction::Detection { boxes: serving[..1].to_vec() },
            &Prediction::Detection { boxes: far.to_vec() },
        )
        .unwrap();
        assert_eq!(a.agreement, 0.0);
        // One extra box on the candidate's side: matched / the larger count.
        let a = prediction(
            &Prediction::Detection { boxes: serving[..1].to_vec() },
            &Prediction::Detection { boxes: serving.to_vec() },
        )
        .unwrap();
        assert_eq!(a.agreement, 0.5);
    }

    #[test]
    fn two_empty_detections_agree_and_one_empty_side_does_not() {
        let empty = Prediction::Detection { boxes: vec![] };
        assert_eq!(prediction(&empty, &empty).unwrap(), Agreement { agreement: 1.0, score_diff: 0.0 });
        let one = Prediction::Detection { boxes: vec![bx(0, 0.9, 0.0, 0.0, 1.0, 1.0)] };
        assert_eq!(prediction(&empty, &one).unwrap().agreement, 0.0);
        assert_eq!(prediction(&one, &empty).unwrap().agreement, 0.0);
    }

    #[test]
    fn anomaly_and_event_detectors_agree_on_the_decision() {
        let anomaly = |score: f32| Prediction::Anomaly { score, threshold: 0.5, anomalous: score > 0.5 };
        let a = prediction(&anomaly(0.8), &anomaly(0.6)).unwrap();
        assert_eq!(a.agreement, 1.0);
        assert!(close(a.score_diff, 0.2));
        assert_eq!(prediction(&anomaly(0.8), &anomaly(0.4)).unwrap().agreement, 0.0);
        let event = |score: f32| Prediction::Event { score, threshold: 0.5, detected: score >= 0.5, label: None };
        assert_eq!(prediction(&event(0.1), &event(0.2)).unwrap().agreement, 1.0);
        assert_eq!(prediction(&event(0.1), &event(0.9)).unwrap().agreement, 0.0);
    }

    #[test]
    fn regression_values_agree_within_the_relative_tolerance() {
        let r = |v: &[f32]| Prediction::Regression { values: v.to_vec() };
        let a = prediction(&r(&[100.0, 0.0]), &r(&[100.05, 0.000_005])).unwrap();
        assert_eq!(a.agreement, 1.0, "{a:?}");
        let a = prediction(&r(&[100.0, 0.0]), &r(&[100.2, 0.0])).unwrap();
        assert_eq!(a.agreement, 0.0);
        assert!((a.score_diff - 0.1).abs() < 1e-4, "the mean absolute difference: {a:?}");
        let err = prediction(&r(&[1.0, 2.0]), &r(&[1.0])).unwrap_err();
        assert!(matches!(err, CompareError::Shape { .. }), "{err}");
    }

    #[test]
    fn raw_outputs_compare_shapes_then_values_and_score_the_first_output() {
        let v = |shape: &[usize], data: &[f32]| Values { shape: shape.to_vec(), data: data.to_vec() };
        let serving = [v(&[1, 2], &[1.0, 2.0]), v(&[1], &[3.0])];
        let a = tensors(&serving, &[v(&[1, 2], &[1.5, 2.5]), v(&[1], &[3.0])]).unwrap();
        assert_eq!(a.agreement, 0.0);
        assert_eq!(a.score_diff, 0.5);
        let a = tensors(&serving, &[v(&[1, 2], &[1.0, 2.0]), v(&[1], &[3.1])]).unwrap();
        assert_eq!((a.agreement, a.score_diff), (0.0, 0.0), "the second output is off; the score reads the first");
        assert_eq!(tensors(&serving, &serving).unwrap(), Agreement { agreement: 1.0, score_diff: 0.0 });
        let err = tensors(&serving, &[v(&[2, 1], &[1.0, 2.0]), v(&[1], &[3.0])]).unwrap_err();
        assert!(matches!(err, CompareError::Shape { .. }), "a shape mismatch is an error: {err}");
        assert!(tensors(&serving, &serving[..1]).is_err(), "a missing output is an error");
    }

    #[test]
    fn nan_on_one_side_is_an_error_and_on_both_sides_agrees() {
        let v = |data: &[f32]| Values { shape: vec![data.len()], data: data.to_vec() };
        let err = tensors(&[v(&[1.0, 2.0])], &[v(&[1.0, f32::NAN])]).unwrap_err();
        assert!(matches!(err, CompareError::NotFinite { .. }), "{err}");
        assert_eq!(tensors(&[v(&[f32::NAN])], &[v(&[f32::NAN])]).unwrap().agreement, 1.0);
        assert!(prediction(&class(1, 0.5), &class(1, f32::NAN)).is_err());
        let anomaly = |score: f32| Prediction::Anomaly { score, threshold: 0.5, anomalous: score > 0.5 };
        assert!(prediction(&anomaly(0.2), &anomaly(f32::NAN)).is_err());
    }

    #[test]
    fn items_are_averaged_and_their_counts_must_match() {
        let a = predictions(&[class(1, 0.5), class(2, 0.5)], &[class(1, 0.5), class(3, 0.5)]).unwrap();
        assert_eq!(a.agreement, 0.5);
        assert_eq!(predictions(&[], &[]).unwrap().agreement, 1.0);
        assert!(predictions(&[class(1, 0.5)], &[]).is_err());
        let err = predictions(&[class(1, 0.5)], &[Prediction::Regression { values: vec![1.0] }]).unwrap_err();
        assert!(matches!(err, CompareError::Kind { .. }), "{err}");
    }
}
