//! Graph rewrites applied before either backend sees a model.
//!
//! scikit-learn classifiers exported by skl2onnx with its default options end in `ZipMap`, which
//! turns the `[N, classes]` probability tensor into a sequence of `{class: probability}` maps.
//! Neither the KServe v2 protocol nor our golden vectors can carry a sequence of maps, and tract
//! has no such type, so the `ZipMap` is replaced by an `Identity`: the output keeps its name and
//! carries the probability matrix, one column per class in the order of the `ZipMap`'s class
//! labels (which [`zipmap_labels`] returns, and `model pack` records as the manifest's labels).
//!
//! The rewrite decodes and re-encodes the model with tract's protobuf types, which do not know
//! every ONNX field (non-tensor value types are dropped), so it runs only when a `ZipMap` is there.

use crate::RuntimeError;
use prost::Message;
use std::borrow::Cow;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto::{Tensor as TensorType, Value as TypeValue};
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto};

const ZIPMAP: &str = "ZipMap";
/// ONNX element type FLOAT.
const FLOAT: i32 = 1;

fn mentions_zipmap(onnx: &[u8]) -> bool {
    onnx.windows(ZIPMAP.len()).any(|w| w == ZIPMAP.as_bytes())
}

fn decode(model: &str, onnx: &[u8]) -> Result<ModelProto, RuntimeError> {
    ModelProto::decode(onnx).map_err(|e| RuntimeError::Model {
        model: model.to_string(),
        reason: format!("not a valid ONNX protobuf: {e}"),
    })
}

/// `onnx` with every `ZipMap` that produces a graph output replaced by an `Identity` of its
/// probability tensor; borrowed unchanged when there is none.
pub fn prepare<'a>(model: &str, onnx: &'a [u8]) -> Result<Cow<'a, [u8]>, RuntimeError> {
    if !mentions_zipmap(onnx) {
        return Ok(Cow::Borrowed(onnx));
    }
    let mut proto = decode(model, onnx)?;
    let Some(graph) = proto.graph.as_mut() else { return Ok(Cow::Borrowed(onnx)) };
    if !unzip(graph) {
        return Ok(Cow::Borrowed(onnx));
    }
    Ok(Cow::Owned(proto.encode_to_vec()))
}

/// The class labels of the first `ZipMap` feeding a graph output, as strings.
pub fn zipmap_labels(onnx: &[u8]) -> Option<Vec<String>> {
    if !mentions_zipmap(onnx) {
        return None;
    }
    let proto = ModelProto::decode(onnx).ok()?;
    let graph = proto.graph.as_ref()?;
    let node = graph.node.iter().find(|n| n.op_type == ZIPMAP)?;
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
    if let Some(a) = attr("classlabels_strings") {
        return Some(a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect());
    }
    attr("classlabels_int64s").map(|a| a.ints.iter().map(i64::to_string).collect())
}

/// Rewrites the graph in place; whether anything changed.
fn unzip(graph: &mut GraphProto) -> bool {
    let mut changed = false;
    let batch = batch_dim(graph);
    for ix in 0..graph.node.len() {
        let node = &graph.node[ix];
        if node.op_type != ZIPMAP || node.input.len() != 1 || node.output.len() != 1 {
            continue;
        }
        let out = node.output[0].clone();
        // A ZipMap feeding other nodes (a DictVectorizer, say) is left alone: its consumers
        // need the maps.
        let consumed = graph.node.iter().any(|n| n.input.contains(&out));
        let Some(graph_output) = graph.output.iter_mut().find(|o| o.name == out) else { continue };
        if consumed {
            continue;
        }
        let classes = node
            .attribute
            .iter()
            .find(|a| a.name == "classlabels_strings" || a.name == "classlabels_int64s")
            .map(|a| a.strings.len().max(a.ints.len()) as i64);
        let dims = vec![batch.clone(), classes.map_or_else(unnamed, fixed)];
        graph_output.r#type = Some(TypeProto {
            denotation: String::new(),
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim: dims }),
            })),
        });
        let input = node.input[0].clone();
        graph.node[ix] = NodeProto {
            name: format!("{}_unzipped", graph.node[ix].name),
            op_type: "Identity".into(),
            input: vec![input],
            output: vec![out],
            ..Default::default()
        };
        changed = true;
    }
    changed
}

/// The first input's first dimension, the batch in every skl2onnx export.
fn batch_dim(graph: &GraphProto) -> Dimension {
    graph
        .input
        .first()
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| t.value.as_ref())
        .and_then(|TypeValue::TensorType(t)| t.shape.as_ref())
        .and_then(|s| s.dim.first().cloned())
        .unwrap_or_else(unnamed)
}

fn unnamed() -> Dimension {
    Dimension { denotation: String::new(), value: None }
}

fn fixed(n: i64) -> Dimension {
    Dimension { denotation: String::new(), value: Some(dimension::Value::DimValue(n)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, ValueInfoProto};

    fn zipmap_model(labels: &[&str]) -> Vec<u8> {
        let tensor = |elem: i32, dims: Vec<Dimension>| TypeProto {
            denotation: String::new(),
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim: dims }),
            })),
        };
        let batch = Dimension { denotation: String::new(), value: Some(dimension::Value::DimParam("N".into())) };
        let graph = GraphProto {
            name: "g".into(),
            node: vec![
                NodeProto {
                    op_type: "Softmax".into(),
                    input: vec!["x".into()],
                    output: vec!["probs".into()],
                    ..Default::default()
                },
                NodeProto {
                    name: "zm".into(),
                    op_type: ZIPMAP.into(),
                    domain: "ai.onnx.ml".into(),
                    input: vec!["probs".into()],
                    output: vec!["output_probability".into()],
                    attribute: vec![AttributeProto {
                        name: "classlabels_strings".into(),
                        strings: labels.iter().map(|l| l.as_bytes().to_vec()).collect(),
                        r#type: 8,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            input: vec![ValueInfoProto {
                name: "x".into(),
                r#type: Some(tensor(FLOAT, vec![batch, fixed(labels.len() as i64)])),
                ..Default::default()
            }],
            // A sequence-of-maps type is not in tract's protobuf: it decodes as an empty type.
            output: vec![ValueInfoProto { name: "output_probability".into(), ..Default::default() }],
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![
                tract_onnx::pb::OperatorSetIdProto { domain: String::new(), version: 13 },
                tract_onnx::pb::OperatorSetIdProto { domain: "ai.onnx.ml".into(), version: 1 },
            ],
            graph: Some(graph),
            ..Default::default()
        };
        proto.encode_to_vec()
    }

    #[test]
    fn zipmap_becomes_a_probability_tensor_that_both_backends_can_carry() {
        let onnx = zipmap_model(&["cat", "dog", "eel"]);
        assert_eq!(zipmap_labels(&onnx).unwrap(), ["cat", "dog", "eel"]);
        let prepared = prepare("m", &onnx).unwrap();
        assert!(matches!(prepared, Cow::Owned(_)));
        let engine = crate::backend::tract::TractEngine::load(&prepared, &Default::default()).unwrap();
        use crate::backend::Engine;
        assert_eq!(engine.outputs()[0].name, "output_probability");
        assert_eq!(engine.outputs()[0].shape, vec![None, Some(3)]);
        let x = crate::Tensor::from_shape(&[2, 3], &[0f32, 0., 0., 1., 2., 3.]).unwrap();
        let out = engine.session().unwrap().run(vec![x]).unwrap();
        let p = crate::tensor::values::<f32>(&out[0]).unwrap();
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-6 && p[5] > p[4], "{p:?}");
    }

    #[test]
    fn graphs_without_zipmap_are_passed_through_untouched() {
        let onnx = ModelProto { ir_version: 8, ..Default::default() }.encode_to_vec();
        assert!(matches!(prepare("m", &onnx).unwrap(), Cow::Borrowed(_)));
        assert_eq!(zipmap_labels(&onnx), None);
        assert!(prepare("m", b"ZipMap but not a protobuf \xff\xff").is_err());
    }
}
