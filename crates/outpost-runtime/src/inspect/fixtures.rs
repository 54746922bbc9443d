//! Tiny ONNX models for tests, written with tract's protobuf types.

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::*;

/// A tensor declaration; negative sizes stand for the symbol `batch`.
pub fn value(name: &str, elem_type: DataType, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 { dimension::Value::DimParam("batch".into()) } else { dimension::Value::DimValue(d) }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor { elem_type: elem_type as i32, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

/// A node named after its op and outputs.
pub fn node(op_type: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op_type.into(),
        name: format!("{op_type}_{}", outputs.join("_")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A FLOAT initializer of small deterministic values, as raw little-endian data.
pub fn weights(name: &str, dims: &[i64], seed: f32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let raw = (0..n).flat_map(|i| ((i as f32 * 0.37 + seed).sin() * 0.1).to_le_bytes()).collect();
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// A model of IR 8, opset 17 around `graph`.
pub fn model(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: 8,
        producer_name: "outpost-test".into(),
        producer_version: "1".into(),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// `y = relu(x · W + b)` with `x: [batch, 64]`, `W: [64, 32]`: 2080 parameters.
pub fn mlp() -> Vec<u8> {
    encode(&model(GraphProto {
        name: "mlp".into(),
        node: vec![node("MatMul", &["x", "W"], &["h"]), node("Add", &["h", "b"], &["a"]), node("Relu", &["a"], &["y"])],
        initializer: vec![weights("W", &[64, 32], 0.0), weights("b", &[32], 1.0)],
        input: vec![value("x", DataType::Float, &[-1, 64])],
        output: vec![value("y", DataType::Float, &[-1, 32])],
        ..Default::default()
    }))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn int(out: &mut Vec<u8>, field: u64, v: i64) {
    if v != 0 {
        varint(out, field << 3);
        varint(out, v as u64);
    }
}
fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}
fn string(out: &mut Vec<u8>, field: u64, s: &str) {
    if !s.is_empty() {
        bytes(out, field, s.as_bytes());
    }
}

/// The protobuf bytes of `m` (only the fields these fixtures set).
pub fn encode(m: &ModelProto) -> Vec<u8> {
    let mut out = Vec::new();
    int(&mut out, 1, m.ir_version);
    string(&mut out, 2, &m.producer_name);
    string(&mut out, 3, &m.producer_version);
    if let Some(g) = &m.graph {
        bytes(&mut out, 7, &graph(g));
    }
    for o in &m.opset_import {
        let mut b = Vec::new();
        string(&mut b, 1, &o.domain);
        int(&mut b, 2, o.version);
        bytes(&mut out, 8, &b);
    }
    out
}

fn graph(g: &GraphProto) -> Vec<u8> {
    let mut out = Vec::new();
    for n in &g.node {
        bytes(&mut out, 1, &node_bytes(n));
    }
    string(&mut out, 2, &g.name);
    for t in &g.initializer {
        bytes(&mut out, 5, &tensor(t));
    }
    for (field, list) in [(11, &g.input), (12, &g.output)] {
        for v in list {
            bytes(&mut out, field, &value_info(v));
        }
    }
    out
}

fn node_bytes(n: &NodeProto) -> Vec<u8> {
    let mut out = Vec::new();
    n.input.iter().for_each(|s| bytes(&mut out, 1, s.as_bytes()));
    n.output.iter().for_each(|s| bytes(&mut out, 2, s.as_bytes()));
    string(&mut out, 3, &n.name);
    string(&mut out, 4, &n.op_type);
    for a in &n.attribute {
        let mut b = Vec::new();
        string(&mut b, 1, &a.name);
        int(&mut b, 20, a.r#type.into());
        if let Some(g) = &a.g {
            bytes(&mut b, 6, &graph(g));
        }
        bytes(&mut out, 5, &b);
    }
    out
}

fn tensor(t: &TensorProto) -> Vec<u8> {
    let mut out = Vec::new();
    for d in &t.dims {
        varint(&mut out, 1 << 3);
        varint(&mut out, *d as u64);
    }
    int(&mut out, 2, t.data_type as i64);
    string(&mut out, 8, &t.name);
    bytes(&mut out, 9, &t.raw_data);
    out
}

fn value_info(v: &ValueInfoProto) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 1, &v.name);
    if let Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), .. }) = &v.r#type {
        let mut tt = Vec::new();
        int(&mut tt, 1, t.elem_type as i64);
        if let Some(shape) = &t.shape {
            let mut s = Vec::new();
            for d in &shape.dim {
                let mut db = Vec::new();
                match &d.value {
                    Some(dimension::Value::DimValue(n)) => {
                        varint(&mut db, 1 << 3);
                        varint(&mut db, *n as u64);
                    }
                    Some(dimension::Value::DimParam(p)) => string(&mut db, 2, p),
                    None => {}
                }
                bytes(&mut s, 1, &db);
            }
            bytes(&mut tt, 2, &s);
        }
        let mut ty = Vec::new();
        bytes(&mut ty, 1, &tt);
        bytes(&mut out, 2, &ty);
    }
    out
}
