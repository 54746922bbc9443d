//! `TreeEnsembleRegressor`, `TreeEnsembleClassifier` (opset 1) and `TreeEnsemble` (opset 5):
//! gradient boosting, random forests, extra trees and isolation forests.
//!
//! The forest itself is in [`super::forest`]; this file parses the attributes and finishes the
//! scores. Finishing follows onnxruntime exactly because skl2onnx relies on its two-class
//! conventions: a binary GradientBoostingClassifier carries one column of weights and one base
//! value, and the probability of the other class is derived from it.

use super::forest::{Aggregate, Forest, NodeIds, NodeSpec, Rule};
use super::labels::{classifier_facts, classifier_rules, Labels, Pick};
use super::transform::{write_scores, PostTransform, SecondClass};
use super::{built, describe, list, rows_and_columns, rows_rule, slice, tensor_of, Built, Kernel};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Registers the three tree ensemble operators.
pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("TreeEnsembleRegressor", regressor);
    reg.insert("TreeEnsembleClassifier", classifier);
    reg.insert("TreeEnsemble", ensemble);
}

/// A float list attribute, or its double `*_as_tensor` twin rounded to float; empty when neither.
fn floats_or_tensor(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    if let Some(v) = node.get_attr_opt_vec::<f32>(name)? {
        return Ok(v);
    }
    tensor_attr(ctx, node, &format!("{name}_as_tensor"))
}

/// A tensor attribute as floats; empty when absent.
fn tensor_attr(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
        Some(proto) => {
            let t = tract_onnx::tensor::load_tensor(ctx.framework.provider.as_ref(), proto, ctx.model_dir)?;
            Ok(slice::<f32>(&*t.cast_to::<f32>()?)?.to_vec())
        }
        None => Ok(vec![]),
    }
}

fn index(name: &str, attr: &str, v: i64) -> TractResult<usize> {
    usize::try_from(v).map_err(|_| format_err!("{name}: `{attr}` holds the negative index {v}"))
}

/// Checks that every list has the length of the first.
fn same_lengths(name: &str, lists: &[(&str, usize)]) -> TractResult<usize> {
    let n = lists.first().map_or(0, |(_, n)| *n);
    for (attr, len) in lists {
        if *len != n {
            bail!("{name}: `{attr}` has {len} values, `{}` has {n}", lists[0].0);
        }
    }
    Ok(n)
}

/// The forest of an opset-1 ensemble; `prefix` is `target` (regressor) or `class` (classifier).
/// Also returns the leaves' target ids and weights as listed, for the classifier's two-class rules.
fn classic_forest(
    ctx: &ParsingContext,
    node: &NodeProto,
    prefix: &str,
    n_targets: usize,
    aggregate: Aggregate,
) -> TractResult<(Forest, Vec<i64>, Vec<f32>)> {
    let name = describe(node);
    let tree_ids: Vec<i64> = list(node, "nodes_treeids")?;
    let node_ids: Vec<i64> = list(node, "nodes_nodeids")?;
    let features: Vec<i64> = list(node, "nodes_featureids")?;
    let modes: Vec<String> = list(node, "nodes_modes")?;
    let values = floats_or_tensor(ctx, node, "nodes_values")?;
    let yes: Vec<i64> = list(node, "nodes_truenodeids")?;
    let no: Vec<i64> = list(node, "nodes_falsenodeids")?;
    let missing: Vec<i64> = list(node, "nodes_missing_value_tracks_true")?;
    let n = same_lengths(
        &name,
        &[
            ("nodes_treeids", tree_ids.len()),
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_modes", modes.len()),
            ("nodes_values", values.len()),
            ("nodes_truenodeids", yes.len()),
            ("nodes_falsenodeids", no.len()),
        ],
    )?;
    if n == 0 {
        bail!("{name}: the ensemble has no node");
    }
    let leaf_trees: Vec<i64> = list(node, &format!("{prefix}_treeids"))?;
    let leaf_nodes: Vec<i64> = list(node, &format!("{prefix}_nodeids"))?;
    let leaf_targets: Vec<i64> = list(node, &format!("{prefix}_ids"))?;
    let leaf_weights = floats_or_tensor(ctx, node, &format!("{prefix}_weights"))?;
    same_lengths(
        &name,
        &[
            (&format!("{prefix}_ids"), leaf_targets.len()),
            (&format!("{prefix}_treeids"), leaf_trees.len()),
            (&format!("{prefix}_nodeids"), leaf_nodes.len()),
            (&format!("{prefix}_weights"), leaf_weights.len()),
        ],
    )?;
    let ids = NodeIds::new(&tree_ids, &node_ids).map_err(|e| format_err!("{name}: {e}"))?;
    let mut specs = Vec::with_capacity(n);
    for i in 0..n {
        let rule = Rule::from_mode(&modes[i]).map_err(|e| format_err!("{name}: {e}"))?;
        let (mut y, mut f) = (0, 0);
        if rule.is_some() {
            y = ids.find(tree_ids[i], yes[i]).map_err(|e| format_err!("{name}: true branch of node {i}: {e}"))?;
            f = ids.find(tree_ids[i], no[i]).map_err(|e| format_err!("{name}: false branch of node {i}: {e}"))?;
        }
        specs.push(NodeSpec {
            feature: if rule.is_some() { index(&name, "nodes_featureids", features[i])? } else { 0 },
            threshold: values[i],
            rule,
            nan_is_true: missing.get(i) == Some(&1),
            yes: y,
            no: f,
            weights: vec![],
        });
    }
    for j in 0..leaf_targets.len() {
        let ix = ids.find(leaf_trees[j], leaf_nodes[j]).map_err(|e| format_err!("{name}: weight {j}: {e}"))?;
        // Weights on a branch come from old converters; onnxruntime ignores them, so do we.
        if specs[ix].rule.is_none() {
            specs[ix].weights.push((index(&name, &format!("{prefix}_ids"), leaf_targets[j])?, leaf_weights[j]));
        }
    }
    let forest = Forest::new(specs, ids.roots, vec![], n_targets, aggregate).map_err(|e| format_err!("{name}: {e}"))?;
    Ok((forest, leaf_targets, leaf_weights))
}

/// The input rows as floats and their count, checked against the forest.
fn input_rows(name: &str, forest: &Forest, x: &TValue) -> TractResult<(Vec<f32>, usize, usize)> {
    let (n, c) = rows_and_columns(name, x.shape())?;
    forest.check_columns(name, c)?;
    let x = super::floats(name, x)?;
    Ok((slice::<f32>(&x)?.to_vec(), n, c))
}

/// Scores of a regression ensemble for one row, as onnxruntime finishes them.
fn finish_regression(
    forest: &Forest,
    base: &[f32],
    post: PostTransform,
    scores: &mut [f32],
    reached: &[bool],
    out: &mut [f32],
) {
    let trees = forest.n_trees() as f32;
    if forest.n_targets == 1 {
        // The single-target path: `origin` is a lone base value, and only PROBIT applies.
        let origin = if base.len() == 1 { base[0] } else { 0.0 };
        let s = match forest.aggregate {
            Aggregate::Sum => scores[0] + origin,
            Aggregate::Average => scores[0] / trees + origin,
            Aggregate::Min | Aggregate::Max if reached[0] => scores[0] + origin,
            Aggregate::Min | Aggregate::Max => origin,
        };
        out[0] = if post == PostTransform::Probit { super::transform::probit(s) } else { s };
        return;
    }
    let use_base = base.len() == forest.n_targets;
    for (k, s) in scores.iter_mut().enumerate() {
        let b = if use_base { base[k] } else { 0.0 };
        *s = match forest.aggregate {
            Aggregate::Sum => *s + b,
            Aggregate::Average => *s / trees + b,
            Aggregate::Min | Aggregate::Max => b + if reached[k] { *s } else { 0.0 },
        };
        // A target no leaf reached reads as 0 whatever its base value.
        if !reached[k] {
            *s = 0.0;
        }
    }
    write_scores(scores, post, SecondClass::Absent, out);
}

/// `TreeEnsembleRegressor` and `TreeEnsemble`: `[N, n_targets]` scores.
#[derive(Debug)]
struct TreeRegressor {
    op: &'static str,
    name: String,
    forest: Forest,
    base: Vec<f32>,
    post: PostTransform,
    /// `TreeEnsemble` answers in the input's float type; the opset-1 regressor always in f32.
    same_type_as_input: bool,
}

fn regressor(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let n_targets = index(&name, "n_targets", node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1))?;
    let aggregate = Aggregate::parse(node.get_attr_opt::<&str>("aggregate_function")?.unwrap_or("SUM"))
        .map_err(|e| format_err!("{name}: {e}"))?;
    let (forest, _, _) = classic_forest(ctx, node, "target", n_targets, aggregate)?;
    let base = floats_or_tensor(ctx, node, "base_values")?;
    let post = PostTransform::from_node(node)?;
    built(TreeRegressor { op: "TreeEnsembleRegressor", name, forest, base, post, same_type_as_input: false })
}

impl Kernel for TreeRegressor {
    fn op_type(&self) -> &'static str {
        self.op
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        if self.same_type_as_input {
            s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        } else {
            s.equals(&outputs[0].datum_type, DatumType::F32)?;
        }
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[1], self.forest.n_targets.to_dim())?;
        rows_rule(s, &inputs[0], &outputs[0])
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = if self.same_type_as_input { inputs[0].datum_type } else { DatumType::F32 };
        let shape = [super::row_dim(&self.name, inputs[0])?, self.forest.n_targets.to_dim()];
        Ok(tvec!(TypedFact::dt_shape(dt, &shape)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n, c) = input_rows(&self.name, &self.forest, &inputs[0])?;
        let t = self.forest.n_targets;
        let (mut scores, mut reached, mut out) = (vec![0f32; t], vec![false; t], vec![0f32; n * t]);
        for (r, row) in x.chunks(c.max(1)).take(n).enumerate() {
            self.forest.accumulate(row, &mut scores, &mut reached);
            finish_regression(&self.forest, &self.base, self.post, &mut scores, &reached, &mut out[r * t..][..t]);
        }
        let y = tensor_of(&[n, t], out)?;
        if self.same_type_as_input && inputs[0].datum_type() != DatumType::F32 {
            return Ok(tvec!(y.cast_to_dt(inputs[0].datum_type())?.into_owned().into_tvalue()));
        }
        Ok(tvec!(y))
    }
}

/// `TreeEnsembleClassifier`: labels `[N]` and scores `[N, classes]`.
#[derive(Debug)]
struct TreeClassifier {
    name: String,
    forest: Forest,
    base: Vec<f32>,
    post: PostTransform,
    labels: Labels,
    /// Two classes and every weight for one class id: the scores are one column.
    binary: bool,
    weights_positive: bool,
}

fn classifier(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let labels = Labels::from_node(node, "classlabels_int64s")?;
    if labels.len() < 2 {
        bail!("{name}: a classifier needs at least two class labels, it has {}", labels.len());
    }
    let aggregate = Aggregate::parse(node.get_attr_opt::<&str>("aggregate_function")?.unwrap_or("SUM"))
        .map_err(|e| format_err!("{name}: {e}"))?;
    let (forest, class_ids, weights) = classic_forest(ctx, node, "class", labels.len(), aggregate)?;
    let base = floats_or_tensor(ctx, node, "base_values")?;
    if labels.len() > 2 && !base.is_empty() && base.len() != labels.len() {
        bail!("{name}: {} base values for {} classes; give one per class or none", base.len(), labels.len());
    }
    let distinct: std::collections::HashSet<i64> = class_ids.iter().copied().collect();
    let binary = labels.len() == 2 && distinct.len() == 1;
    let weights_positive = weights.iter().all(|w| *w >= 0.0);
    let post = PostTransform::from_node(node)?;
    built(TreeClassifier { name, forest, base, post, labels, binary, weights_positive })
}

impl TreeClassifier {
    /// Finishes one row: writes the scores into `out` and returns the label, as onnxruntime's
    /// `TreeAggregatorClassifier::FinalizeScores` does.
    fn finish(&self, scores: &mut [f32], reached: &mut [bool], out: &mut [f32]) -> Pick {
        let value = |s: f32, r: bool| if r { s } else { 0.0 };
        if scores.len() > 2 {
            for (k, b) in self.base.iter().enumerate() {
                scores[k] = if reached[k] { scores[k] + b } else { *b };
                reached[k] = true;
            }
            let mut best: Option<usize> = None;
            for k in 0..scores.len() {
                if reached[k] && best.is_none_or(|b| scores[k] > scores[b]) {
                    best = Some(k);
                }
            }
            let mut v: Vec<f32> = scores.iter().zip(reached.iter()).map(|(s, r)| value(*s, *r)).collect();
            write_scores(&mut v, self.post, SecondClass::Absent, out);
            return Pick::Class(best.unwrap_or(0));
        }
        let mut second = SecondClass::Absent;
        let mut len = 2;
        match self.base.len() {
            2 if reached[1] => {
                // onnxruntime assumes both base values are equal here and uses class 0's score.
                scores[1] = self.base[1] + scores[0];
                scores[0] = -scores[1];
            }
            2 => {
                scores[1] += self.base[1];
                scores[0] += self.base[0];
            }
            1 => {
                scores[0] += self.base[0];
                if !reached[1] {
                    len = 1;
                }
            }
            0 => {
                second = SecondClass::Negated;
                if !reached[1] {
                    len = 1;
                }
            }
            _ => {}
        }
        let positive = if len == 2 && reached[1] {
            scores[1]
        } else if reached[0] {
            scores[0]
        } else {
            0.0
        };
        let pick = if self.binary {
            let (wins, kind) = if self.weights_positive {
                (positive > 0.5, SecondClass::Complement)
            } else {
                (positive > 0.0, SecondClass::Negated)
            };
            second = kind;
            Pick::Class(usize::from(wins))
        } else {
            Pick::Literal(usize::from(positive > 0.0))
        };
        let mut v: Vec<f32> = scores[..len].iter().zip(reached.iter()).map(|(s, r)| value(*s, *r)).collect();
        write_scores(&mut v, self.post, second, out);
        pick
    }
}

impl Kernel for TreeClassifier {
    fn op_type(&self) -> &'static str {
        "TreeEnsembleClassifier"
    }

    fn outputs(&self) -> usize {
        2
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        classifier_rules(s, inputs, outputs, self.labels.datum_type(), self.labels.len())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        classifier_facts(&self.name, inputs, self.labels.datum_type(), self.labels.len())
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n, c) = input_rows(&self.name, &self.forest, &inputs[0])?;
        let k = self.labels.len();
        let (mut scores, mut reached, mut out) = (vec![0f32; k], vec![false; k], vec![0f32; n * k]);
        let mut picks = Vec::with_capacity(n);
        for (r, row) in x.chunks(c.max(1)).take(n).enumerate() {
            self.forest.accumulate(row, &mut scores, &mut reached);
            picks.push(self.finish(&mut scores, &mut reached, &mut out[r * k..][..k]));
        }
        Ok(tvec!(self.labels.tensor(&picks)?, tensor_of(&[n, k], out)?))
    }
}

/// `TreeEnsemble` (ai.onnx.ml opset 5): nodes and leaves in separate arrays, thresholds and
/// weights as tensors, integer enums for modes, aggregation and post transform.
fn ensemble(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let n_targets = index(&name, "n_targets", node.get_attr::<i64>("n_targets")?)?;
    let aggregate = match node.get_attr_opt::<i64>("aggregate_function")?.unwrap_or(1) {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        other => bail!("{name}: aggregate_function {other} is not 0 (AVERAGE), 1 (SUM), 2 (MIN) or 3 (MAX)"),
    };
    let post = match node.get_attr_opt::<i64>("post_transform")?.unwrap_or(0) {
        0 => PostTransform::None,
        1 => PostTransform::Softmax,
        2 => PostTransform::Logistic,
        3 => PostTransform::SoftmaxZero,
        4 => PostTransform::Probit,
        other => bail!("{name}: post_transform {other} is not between 0 (NONE) and 4 (PROBIT)"),
    };
    let features: Vec<i64> = list(node, "nodes_featureids")?;
    let modes = tensor_attr(ctx, node, "nodes_modes")?;
    let splits = tensor_attr(ctx, node, "nodes_splits")?;
    let yes: Vec<i64> = list(node, "nodes_truenodeids")?;
    let yes_leaf: Vec<i64> = list(node, "nodes_trueleafs")?;
    let no: Vec<i64> = list(node, "nodes_falsenodeids")?;
    let no_leaf: Vec<i64> = list(node, "nodes_falseleafs")?;
    let missing: Vec<i64> = list(node, "nodes_missing_value_tracks_true")?;
    let n = same_lengths(
        &name,
        &[
            ("nodes_featureids", features.len()),
            ("nodes_modes", modes.len()),
            ("nodes_splits", splits.len()),
            ("nodes_truenodeids", yes.len()),
            ("nodes_trueleafs", yes_leaf.len()),
            ("nodes_falsenodeids", no.len()),
            ("nodes_falseleafs", no_leaf.len()),
        ],
    )?;
    let targets: Vec<i64> = list(node, "leaf_targetids")?;
    let weights = tensor_attr(ctx, node, "leaf_weights")?;
    let leaves = same_lengths(&name, &[("leaf_targetids", targets.len()), ("leaf_weights", weights.len())])?;
    // Sets of BRANCH_MEMBER nodes, in node order, separated by NaN.
    let members = tensor_attr(ctx, node, "membership_values")?;
    let sets: Vec<Vec<f32>> = members.split(|v| v.is_nan()).map(|s| s.to_vec()).collect();
    let mut next_set = 0;
    let child = |i: usize, id: i64, is_leaf: i64, attr: &str| -> TractResult<usize> {
        let id = index(&name, attr, id)?;
        let (limit, offset) = if is_leaf != 0 { (leaves, n) } else { (n, 0) };
        if id >= limit {
            bail!("{name}: `{attr}` of node {i} points past the end ({id} >= {limit})");
        }
        Ok(offset + id)
    };
    let mut specs = Vec::with_capacity(n + leaves);
    for i in 0..n {
        let rule = match modes[i] as i64 {
            0 => Rule::Leq,
            1 => Rule::Lt,
            2 => Rule::Gte,
            3 => Rule::Gt,
            4 => Rule::Eq,
            5 => Rule::Neq,
            6 => {
                next_set += 1;
                Rule::Member(next_set - 1)
            }
            other => bail!("{name}: node {i} has mode {other}, not between 0 (BRANCH_LEQ) and 6 (BRANCH_MEMBER)"),
        };
        specs.push(NodeSpec {
            feature: index(&name, "nodes_featureids", features[i])?,
            threshold: splits[i],
            rule: Some(rule),
            nan_is_true: missing.get(i) == Some(&1),
            yes: child(i, yes[i], yes_leaf[i], "nodes_truenodeids")?,
            no: child(i, no[i], no_leaf[i], "nodes_falsenodeids")?,
            weights: vec![],
        });
    }
    for j in 0..leaves {
        let target = index(&name, "leaf_targetids", targets[j])?;
        specs.push(NodeSpec {
            feature: 0,
            threshold: 0.0,
            rule: None,
            nan_is_true: false,
            yes: 0,
            no: 0,
            weights: vec![(target, weights[j])],
        });
    }
    let roots = list::<i64>(node, "tree_roots")?
        .into_iter()
        .map(|r| {
            let r = index(&name, "tree_roots", r)?;
            if r >= n {
                bail!("{name}: tree root {r} is not a node ({n} nodes)");
            }
            Ok(r)
        })
        .collect::<TractResult<Vec<usize>>>()?;
    let forest = Forest::new(specs, roots, sets, n_targets, aggregate).map_err(|e| format_err!("{name}: {e}"))?;
    built(TreeRegressor { op: "TreeEnsemble", name, forest, base: vec![], post, same_type_as_input: true })
}
