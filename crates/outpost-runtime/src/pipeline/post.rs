//! Reading model outputs into classification, event, anomaly and regression predictions.
//!
//! A post step reads the output it names, or the model's first output, as f32 whatever its
//! element type. Problems with an output's type or shape are config errors: the manifest promised
//! something this model does not produce, and no request can fix that.

use super::{config, PipelineError};
use crate::Tensor;
use outpost_proto::manifest::{AnomalyPost, ClassificationPost, Manifest, RegressionPost, ThresholdPost};
use outpost_proto::prediction::{LabelScore, Prediction};
use std::borrow::Cow;

/// One model output, as f32.
pub(super) struct Output<'a> {
    /// Name from the manifest, for error messages.
    pub name: String,
    tensor: Cow<'a, Tensor>,
}

impl Output<'_> {
    /// The output's shape.
    pub fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    /// The output's values in row-major order.
    pub fn values(&self) -> Result<&[f32], PipelineError> {
        crate::tensor::values::<f32>(&self.tensor)
            .map_err(|e| config(format!("post: cannot read output `{}` as f32: {e}", self.name)))
    }
}

/// The output named `wanted`, or the first one.
pub(super) fn output<'a>(
    manifest: &Manifest,
    outputs: &'a [Tensor],
    wanted: Option<&str>,
) -> Result<Output<'a>, PipelineError> {
    let index = match wanted {
        None => 0,
        Some(name) => manifest.outputs.iter().position(|o| o.name == name).ok_or_else(|| {
            let names: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
            config(format!("post.output `{name}` is not one of the model's outputs {names:?}"))
        })?,
    };
    let name = manifest.outputs.get(index).map_or_else(|| format!("#{index}"), |o| o.name.clone());
    let tensor = outputs.get(index).ok_or_else(|| {
        config(format!("post: the model returned {} outputs, so output `{name}` (#{index}) is missing", outputs.len()))
    })?;
    let tensor = tensor
        .cast_to::<f32>()
        .map_err(|e| config(format!("post: output `{name}` of type {:?} is not numeric: {e}", tensor.datum_type())))?;
    Ok(Output { name, tensor })
}

/// Top-k classes, optionally after softmax, with labels from the manifest.
pub(super) fn classification(
    post: &ClassificationPost,
    manifest: &Manifest,
    outputs: &[Tensor],
) -> Result<Prediction, PipelineError> {
    if post.top_k == 0 {
        return Err(config("post.top_k is 0; it must be at least 1"));
    }
    let out = output(manifest, outputs, post.output.as_deref())?;
    let scores = out.values()?;
    let rows: usize = out.shape().split_last().map_or(0, |(_, lead)| lead.iter().product());
    if rows != 1 || scores.is_empty() {
        return Err(config(format!(
            "post (classification): output `{}` has shape {:?}; expected one row of class scores, [classes] or \
             [1, classes]",
            out.name,
            out.shape()
        )));
    }
    let probabilities = if post.softmax { softmax(scores) } else { scores.to_vec() };
    let mut ranked: Vec<(usize, f32)> = probabilities.into_iter().enumerate().collect();
    // NaN ranks last; `total_cmp` keeps the order total so sorting cannot panic.
    let rank = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    ranked.sort_by(|a, b| rank(b.1).total_cmp(&rank(a.1)).then(a.0.cmp(&b.0)));
    let top = ranked
        .into_iter()
        .take(post.top_k)
        .map(|(index, score)| LabelScore { index, label: manifest.labels.get(index).cloned(), score })
        .collect();
    Ok(Prediction::Classification { top })
}

/// Softmax, shifted by the maximum so large logits do not overflow `exp`.
pub(super) fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// One score against a threshold: an event (voice activity, wake word).
pub(super) fn threshold(
    post: &ThresholdPost,
    manifest: &Manifest,
    outputs: &[Tensor],
) -> Result<Prediction, PipelineError> {
    let score = single_score(&output(manifest, outputs, post.output.as_deref())?, "threshold")?;
    Ok(Prediction::Event {
        score,
        threshold: post.threshold,
        detected: score >= post.threshold,
        label: post.label.clone(),
    })
}

/// One anomaly score per window against a threshold.
pub(super) fn anomaly(
    post: &AnomalyPost,
    manifest: &Manifest,
    outputs: &[Tensor],
) -> Result<Prediction, PipelineError> {
    let score = single_score(&output(manifest, outputs, post.output.as_deref())?, "anomaly")?;
    Ok(Prediction::Anomaly { score, threshold: post.threshold, anomalous: score > post.threshold })
}

/// The output's values, flattened.
pub(super) fn regression(
    post: &RegressionPost,
    manifest: &Manifest,
    outputs: &[Tensor],
) -> Result<Prediction, PipelineError> {
    let out = output(manifest, outputs, post.output.as_deref())?;
    Ok(Prediction::Regression { values: out.values()?.to_vec() })
}

fn single_score(out: &Output<'_>, kind: &str) -> Result<f32, PipelineError> {
    match out.values()? {
        [score] => Ok(*score),
        values => Err(config(format!(
            "post ({kind}): output `{}` has shape {:?} ({} values); expected a single score per item",
            out.name,
            out.shape(),
            values.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::manifest;
    use outpost_proto::prediction::Prediction;
    use tract_onnx::prelude::{tensor1, tensor2};

    fn cls(softmax: bool, top_k: usize) -> ClassificationPost {
        ClassificationPost { output: None, softmax, top_k }
    }

    fn top(p: Prediction) -> Vec<(usize, Option<String>, f32)> {
        match p {
            Prediction::Classification { top } => top.into_iter().map(|l| (l.index, l.label, l.score)).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn top_k_ranks_scores_and_attaches_labels() {
        let m = manifest("classification", &["cat", "dog", "bird"]);
        let out = tensor2(&[[0.1f32, 0.7, 0.2]]);
        let t = top(classification(&cls(false, 2), &m, &[out]).unwrap());
        assert_eq!(t, vec![(1, Some("dog".into()), 0.7), (2, Some("bird".into()), 0.2)]);
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0, "{p:?}");
        let m = manifest("classification", &["a"]);
        let t = top(classification(&cls(true, 5), &m, &[tensor1(&[0.0f32, 2.0f32.ln()])]).unwrap());
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].0, t[0].1.as_deref()), (1, None));
        assert!((t[0].2 - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn other_float_types_are_cast_and_named_outputs_are_used() {
        let m = manifest("classification", &[]);
        let post = ClassificationPost { output: Some("extra".into()), softmax: false, top_k: 1 };
        let outs = [tensor1(&[9.0f32]), tensor1(&[0.25f64, 0.75])];
        assert_eq!(top(classification(&post, &m, &outs).unwrap()), vec![(1, None, 0.75)]);
    }

    #[test]
    fn nan_scores_rank_last_without_panicking() {
        let m = manifest("classification", &[]);
        let t = top(classification(&cls(false, 3), &m, &[tensor1(&[f32::NAN, 0.5, 0.1])]).unwrap());
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 0]);
    }

    #[test]
    fn batches_missing_outputs_and_strings_are_config_errors() {
        let m = manifest("classification", &[]);
        let errs = [
            classification(&cls(false, 1), &m, &[tensor2(&[[0.1f32, 0.2], [0.3, 0.4]])]),
            classification(&cls(false, 1), &m, &[]),
            classification(&cls(false, 0), &m, &[tensor1(&[1.0f32])]),
            classification(&cls(false, 1), &m, &[tensor1(&["x".to_string()])]),
            classification(
                &ClassificationPost { output: Some("nope".into()), ..cls(false, 1) },
                &m,
                &[tensor1(&[1.0f32])],
            ),
        ];
        for e in errs {
            assert!(!e.unwrap_err().is_client_error());
        }
    }

    #[test]
    fn threshold_and_anomaly_compare_one_score() {
        let m = manifest("anomaly", &[]);
        let t = ThresholdPost { output: None, threshold: 0.5, label: Some("speech".into()) };
        let p = threshold(&t, &m, &[tensor2(&[[0.5f32]])]).unwrap();
        assert_eq!(p, Prediction::Event { score: 0.5, threshold: 0.5, detected: true, label: Some("speech".into()) });
        let a = AnomalyPost { output: None, threshold: 0.5 };
        let p = anomaly(&a, &m, &[tensor1(&[0.5f32])]).unwrap();
        assert_eq!(p, Prediction::Anomaly { score: 0.5, threshold: 0.5, anomalous: false });
        let err = anomaly(&a, &m, &[tensor1(&[0.1f32, 0.9])]).unwrap_err();
        assert!(!err.is_client_error() && err.to_string().contains("single score"), "{err}");
    }

    #[test]
    fn regression_flattens_values() {
        let m = manifest("regression", &[]);
        let p = regression(&RegressionPost::default(), &m, &[tensor2(&[[1.0f32, 2.0], [3.0, 4.0]])]).unwrap();
        assert_eq!(p, Prediction::Regression { values: vec![1.0, 2.0, 3.0, 4.0] });
    }
}
