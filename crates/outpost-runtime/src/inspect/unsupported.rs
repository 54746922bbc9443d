//! Operators tract has no implementation for, summarised once per type.
//!
//! An exported forest has hundreds of nodes of one unsupported type; listing each node made a
//! 19 KB error that hid the one useful fact (which operator, and what to do instead). The backend
//! and `outpost model inspect` both describe the problem through this module so that they agree.

use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use tract_onnx::model::OnnxOpRegister;
use tract_onnx::pb::GraphProto;

/// One operator type tract cannot build, and how many nodes use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsupportedOp {
    /// ONNX `op_type`.
    pub op_type: String,
    /// Operator domain, `ai.onnx` for the default one.
    pub domain: String,
    /// Nodes of this type, subgraphs included.
    pub count: usize,
}

impl fmt::Display for UnsupportedOp {
    /// `TreeEnsembleRegressor ×100 (ai.onnx.ml)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ×{} ({})", self.op_type, self.count, self.domain)
    }
}

/// Operator types of `graph` and its subgraphs that `known` has no builder for, most used first.
///
/// tract looks builders up by `op_type` alone, whatever the domain, and so does this.
pub fn unsupported_ops(graph: &GraphProto, known: &OnnxOpRegister) -> Vec<UnsupportedOp> {
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    // An explicit stack: nesting depth comes from the file and must not overflow ours.
    let mut pending = vec![graph];
    while let Some(g) = pending.pop() {
        for node in &g.node {
            if !known.0.contains_key(node.op_type.as_str()) {
                let domain = if node.domain.is_empty() { "ai.onnx" } else { node.domain.as_str() };
                *counts.entry((node.op_type.as_str(), domain)).or_default() += 1;
            }
            for attr in &node.attribute {
                pending.extend(attr.g.iter().chain(&attr.graphs));
            }
        }
    }
    let mut ops: Vec<UnsupportedOp> = counts
        .into_iter()
        .map(|((op_type, domain), count)| UnsupportedOp { op_type: op_type.into(), domain: domain.into(), count })
        .collect();
    ops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.op_type, &a.domain).cmp(&(&b.op_type, &b.domain))));
    ops
}

/// `X ×100 (ai.onnx.ml), Y ×1 (ai.onnx.ml)`.
pub fn summary(ops: &[UnsupportedOp]) -> String {
    ops.iter().map(UnsupportedOp::to_string).collect::<Vec<_>>().join(", ")
}

/// The whole explanation, with what to do about it.
pub fn unsupported_message(ops: &[UnsupportedOp]) -> String {
    format!(
        "unsupported operators: {}; use the onnxruntime backend (`--backend onnxruntime`, or `auto` with \
         libonnxruntime available) or re-export without them",
        summary(ops)
    )
}
