//! One-node `ai.onnx.ml` graphs for the operator tests, run through the same parser
//! ([`framework`]) and optimiser as the tract backend, with a symbolic batch dimension.

use crate::backend::tract::framework;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::*;
use tract_onnx::prelude::*;

/// An attribute value.
pub enum A<'a> {
    Int(i64),
    Float(f32),
    Str(&'a str),
    Ints(&'a [i64]),
    Floats(&'a [f32]),
    Strs(&'a [&'a str]),
    /// A float tensor attribute (opset-5 `TreeEnsemble`).
    FloatTensor(&'a [f32]),
    /// A uint8 tensor attribute (opset-5 `nodes_modes`).
    ByteTensor(&'a [u8]),
}

/// An attribute named `name`.
pub fn attr(name: &str, value: A) -> AttributeProto {
    let mut a = AttributeProto { name: name.into(), ..Default::default() };
    let ty = match value {
        A::Int(i) => {
            a.i = i;
            AttributeType::Int
        }
        A::Float(f) => {
            a.f = f;
            AttributeType::Float
        }
        A::Str(s) => {
            a.s = s.as_bytes().to_vec();
            AttributeType::String
        }
        A::Ints(v) => {
            a.ints = v.to_vec();
            AttributeType::Ints
        }
        A::Floats(v) => {
            a.floats = v.to_vec();
            AttributeType::Floats
        }
        A::Strs(v) => {
            a.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect();
            AttributeType::Strings
        }
        A::FloatTensor(v) => {
            a.t = Some(TensorProto {
                dims: vec![v.len() as i64],
                data_type: DataType::Float as i32,
                float_data: v.to_vec(),
                ..Default::default()
            });
            AttributeType::Tensor
        }
        A::ByteTensor(v) => {
            a.t = Some(TensorProto {
                dims: vec![v.len() as i64],
                data_type: DataType::Uint8 as i32,
                int32_data: v.iter().map(|b| *b as i32).collect(),
                ..Default::default()
            });
            AttributeType::Tensor
        }
    };
    a.r#type = ty as i32;
    a
}

fn elem_type(dt: DatumType) -> DataType {
    match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F64 => DataType::Double,
        DatumType::I64 => DataType::Int64,
        DatumType::I32 => DataType::Int32,
        DatumType::String => DataType::String,
        other => panic!("no test support for {other:?}"),
    }
}

/// Declares a graph input like `t`, with the first of two or more dimensions symbolic (`N`).
fn input(name: &str, t: &Tensor) -> ValueInfoProto {
    let dim = t
        .shape()
        .iter()
        .enumerate()
        .map(|(i, &d)| Dimension {
            value: Some(if i == 0 && t.rank() >= 2 {
                dimension::Value::DimParam("N".into())
            } else {
                dimension::Value::DimValue(d as i64)
            }),
            ..Default::default()
        })
        .collect();
    let tensor =
        type_proto::Tensor { elem_type: elem_type(t.datum_type()) as i32, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

/// Runs one `ai.onnx.ml` node `op` with `attrs` on `inputs`; returns its `outputs` outputs.
/// Inputs named `const:<name>` become initializers instead of graph inputs.
pub fn run(
    op: &str,
    attrs: Vec<AttributeProto>,
    inputs: Vec<(&str, Tensor)>,
    outputs: usize,
) -> TractResult<Vec<Tensor>> {
    let output_names: Vec<String> = (0..outputs).map(|i| format!("y{i}")).collect();
    let mut graph = GraphProto { name: "ml".into(), ..Default::default() };
    let mut feeds = tvec![];
    let mut node_inputs = vec![];
    for (name, t) in inputs {
        if let Some(name) = name.strip_prefix("const:") {
            graph.initializer.push(initializer(name, &t));
            node_inputs.push(name.to_string());
        } else {
            graph.input.push(input(name, &t));
            node_inputs.push(name.to_string());
            feeds.push(t.into_tvalue());
        }
    }
    graph.node.push(NodeProto {
        op_type: op.into(),
        domain: "ai.onnx.ml".into(),
        name: format!("the_{}", op.to_lowercase()),
        input: node_inputs,
        output: output_names.clone(),
        attribute: attrs,
        ..Default::default()
    });
    graph.output = output_names.iter().map(|n| ValueInfoProto { name: n.clone(), ..Default::default() }).collect();
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto { domain: String::new(), version: 17 },
            OperatorSetIdProto { domain: "ai.onnx.ml".into(), version: 3 },
        ],
        graph: Some(graph),
        ..Default::default()
    };
    let typed = framework().model_for_proto_model(&model)?.into_optimized()?;
    let plan = TypedSimplePlan::new_with_options(typed, &RunOptions::default())?;
    let mut state = plan.spawn()?;
    Ok(state.run(feeds)?.into_iter().map(|v| v.into_tensor()).collect())
}

fn initializer(name: &str, t: &Tensor) -> TensorProto {
    let values: Vec<i64> =
        t.cast_to::<i64>().expect("int64 initializer").try_as_plain_ram().unwrap().as_slice::<i64>().unwrap().to_vec();
    TensorProto {
        name: name.into(),
        dims: t.shape().iter().map(|d| *d as i64).collect(),
        data_type: DataType::Int64 as i32,
        int64_data: values,
        ..Default::default()
    }
}

/// A float tensor of `shape`.
pub fn floats(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_shape(shape, data).unwrap()
}

/// The data of a float output.
pub fn out_f32(t: &Tensor) -> Vec<f32> {
    t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

/// The data of an int64 output.
pub fn out_i64(t: &Tensor) -> Vec<i64> {
    t.try_as_plain_ram().unwrap().as_slice::<i64>().unwrap().to_vec()
}

/// The data of a string output.
pub fn out_str(t: &Tensor) -> Vec<String> {
    t.try_as_plain_ram().unwrap().as_slice::<String>().unwrap().to_vec()
}

/// Asserts two float slices agree to 1e-6, showing both on failure.
pub fn assert_close(got: &[f32], want: &[f32]) {
    let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-6 * w.abs().max(1.0));
    assert!(ok, "got {got:?}, want {want:?}");
}
