//! What classifiers answer: their class labels (int64 or string), the label picked for each
//! row, and the types and shapes of the `(labels, scores)` pair, shared by the tree ensemble and
//! SVM classifiers.

use super::{describe, list, rows_rule, tensor_of};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Class labels of a classifier.
#[derive(Debug, Clone)]
pub(crate) enum Labels {
    /// `classlabels_int64s` / `classlabels_ints`.
    Ints(Vec<i64>),
    /// `classlabels_strings`.
    Strings(Vec<String>),
}

impl Labels {
    /// Reads `<ints_attr>` or `classlabels_strings`.
    pub fn from_node(node: &NodeProto, ints_attr: &str) -> TractResult<Labels> {
        let ints: Vec<i64> = list(node, ints_attr)?;
        let strings: Vec<String> = list(node, "classlabels_strings")?;
        match (ints.is_empty(), strings.is_empty()) {
            (false, true) => Ok(Labels::Ints(ints)),
            (true, false) => Ok(Labels::Strings(strings)),
            _ => bail!("{}: exactly one of `{ints_attr}` and `classlabels_strings` must be given", describe(node)),
        }
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }

    /// Element type of the label output.
    pub fn datum_type(&self) -> DatumType {
        match self {
            Labels::Ints(_) => DatumType::I64,
            Labels::Strings(_) => DatumType::String,
        }
    }

    /// The label output of `picks`, one per row.
    pub fn tensor(&self, picks: &[Pick]) -> TractResult<TValue> {
        match self {
            Labels::Ints(v) => tensor_of(
                &[picks.len()],
                picks
                    .iter()
                    .map(|p| match p {
                        Pick::Class(i) => v.get(*i).copied().unwrap_or_default(),
                        Pick::Literal(l) => *l as i64,
                    })
                    .collect(),
            ),
            Labels::Strings(v) => tensor_of(
                &[picks.len()],
                picks
                    .iter()
                    .map(|p| {
                        let (Pick::Class(i) | Pick::Literal(i)) = p;
                        v.get(*i).cloned().unwrap_or_default()
                    })
                    .collect(),
            ),
        }
    }
}

/// The label a classifier picks for a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The class at this position.
    Class(usize),
    /// onnxruntime's two-class fallback: the integer label 0 or 1 itself (for string labels, the
    /// label at that position).
    Literal(usize),
}

/// Inference rules shared by classifiers: labels `[N]`, scores `[N, classes]` of f32.
pub(crate) fn classifier_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    label_type: DatumType,
    classes: usize,
) -> InferenceResult {
    // Checked here, where the outputs are indexed, so no caller can forget it.
    check_input_arity(inputs, 1)?;
    check_output_arity(outputs, 2)?;
    s.equals(&outputs[0].datum_type, label_type)?;
    s.equals(&outputs[1].datum_type, DatumType::F32)?;
    s.equals(&outputs[0].rank, 1)?;
    s.equals(&outputs[1].rank, 2)?;
    s.equals(&outputs[1].shape[1], classes.to_dim())?;
    s.equals(&outputs[0].shape[0], &outputs[1].shape[0])?;
    rows_rule(s, &inputs[0], &outputs[1])
}

/// Typed facts shared by classifiers.
pub(crate) fn classifier_facts(
    name: &str,
    inputs: &[&TypedFact],
    label_type: DatumType,
    classes: usize,
) -> TractResult<TVec<TypedFact>> {
    let n = super::row_dim(name, inputs[0])?;
    Ok(tvec!(TypedFact::dt_shape(label_type, std::slice::from_ref(&n)), f32::fact(&[n, classes.to_dim()])))
}
