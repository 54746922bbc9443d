//! ONNX graphs for tests, built from tract's own protobuf types and encoded with prost: every
//! field (attributes, domains, `value_info`) is available, unlike the hand-written encoder of
//! `inspect::fixtures`.

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{type_proto, AttributeProto, ModelProto, OperatorSetIdProto, TensorShapeProto, TypeProto};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto, ValueInfoProto};

/// A declared dimension: a size or a symbol.
pub enum D {
    /// A fixed size.
    N(i64),
    /// A named symbol.
    S(&'static str),
    /// No size and no name (written `?` by `inspect`).
    Unnamed,
}

/// A tensor declaration.
pub fn value(name: &str, elem: DataType, dims: &[D]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: match d {
                D::N(n) => Some(dimension::Value::DimValue(*n)),
                D::S(s) => Some(dimension::Value::DimParam(s.to_string())),
                D::Unnamed => None,
            },
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor { elem_type: elem as i32, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

/// `[batch, sequence]` int64 token ids.
pub fn ids(name: &str) -> ValueInfoProto {
    value(name, DataType::Int64, &[D::S("batch"), D::S("sequence")])
}

/// A node named after its op and outputs.
pub fn node(op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{op}_{}", outputs.join("_")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

/// An integer-list attribute.
pub fn ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: ints.to_vec(), ..Default::default() }
}

/// A tensor attribute.
pub fn tensor_attribute(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Tensor as i32, t: Some(t), ..Default::default() }
}

/// A float table of small deterministic values.
pub fn table(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: (0..n).map(|i| (i as f32 * 0.37).sin() * 0.1).collect(),
        ..Default::default()
    }
}

/// An INT64 initializer.
pub fn int64s(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// The protobuf bytes of a model of IR 8, opset 17 (and com.microsoft 1) around `graph`.
pub fn encode(graph: GraphProto) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        producer_name: "outpost-test".into(),
        opset_import: vec![
            OperatorSetIdProto { domain: String::new(), version: 17 },
            OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 },
        ],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}
