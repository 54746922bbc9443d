//! A small builder for ONNX graphs on tract-onnx's protobuf types.
//!
//! We write ONNX directly rather than through a Python exporter so the model is made by the
//! same binary that ships it. The builder tracks which values exist and refuses a node that
//! reads a value nobody produced, because ONNX runtimes report such mistakes far from their
//! cause ("input not found" at load time on a device).

use crate::TrainError;
use outpost_proto::manifest::Dim;
use prost::Message;
use std::collections::BTreeSet;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto;
use tract_onnx::pb::{
    attribute_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Operator set the graphs target; opset 13+ takes `ReduceSum` axes as an input.
pub const OPSET: i64 = 17;
/// ONNX IR version written into models (IR 8 pairs with opset 17).
pub const IR_VERSION: i64 = 8;
/// `producer_name` written into models.
pub const PRODUCER: &str = "outpost-train";

/// An ONNX graph being assembled, node by node in execution order.
#[derive(Debug)]
pub struct GraphBuilder {
    name: String,
    graph: GraphProto,
    defined: BTreeSet<String>,
    problems: Vec<String>,
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            name: name.to_string(),
            graph: GraphProto { name: name.to_string(), ..Default::default() },
            defined: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// Declares a FLOAT graph input; symbolic dimensions become `dim_param`.
    pub fn input_f32(&mut self, name: &str, shape: &[Dim]) -> String {
        self.define(name);
        self.graph.input.push(value_info(name, shape));
        name.to_string()
    }

    /// Declares a FLOAT graph output, which some node must produce.
    pub fn output_f32(&mut self, name: &str, shape: &[Dim]) {
        self.graph.output.push(value_info(name, shape));
    }

    /// Adds a FLOAT initializer (a constant tensor, row-major) and returns its name.
    pub fn constant_f32(&mut self, name: &str, dims: &[usize], values: &[f64]) -> String {
        self.check_len(name, dims, values.len());
        self.define(name);
        self.graph.initializer.push(TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            float_data: values.iter().map(|&v| v as f32).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an INT64 initializer (shapes, axes) and returns its name.
    pub fn constant_i64(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        self.check_len(name, dims, values.len());
        self.define(name);
        self.graph.initializer.push(TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64 as i32,
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Appends a node of the default domain computing `output` from `inputs`; returns `output`.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> String {
        for input in inputs {
            if !self.defined.contains(*input) {
                self.problems.push(format!("{op_type} `{output}` reads `{input}`, which is not defined before it"));
            }
        }
        self.define(output);
        self.graph.node.push(NodeProto {
            name: output.to_string(),
            op_type: op_type.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute: attributes,
            ..Default::default()
        });
        output.to_string()
    }

    /// Wraps the graph in a model with the opset, IR version and producer set.
    pub fn finish(mut self, doc: &str) -> Result<ModelProto, TrainError> {
        for output in &self.graph.output {
            if !self.defined.contains(&output.name) {
                self.problems.push(format!("graph output `{}` is never computed", output.name));
            }
        }
        if !self.problems.is_empty() {
            return Err(TrainError::Graph { graph: self.name, reason: self.problems.join("; ") });
        }
        Ok(ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: PRODUCER.to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            doc_string: doc.to_string(),
            graph: Some(self.graph),
            ..Default::default()
        })
    }

    fn define(&mut self, name: &str) {
        if !self.defined.insert(name.to_string()) {
            self.problems.push(format!("value `{name}` is defined twice"));
        }
    }

    fn check_len(&mut self, name: &str, dims: &[usize], len: usize) {
        let expected: usize = dims.iter().product();
        if expected != len {
            self.problems.push(format!("initializer `{name}` has shape {dims:?} but {len} values"));
        }
    }
}

/// An INT attribute.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// An INTS attribute (strides, pads, kernel shapes).
pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// Serialises a model to ONNX protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

fn value_info(name: &str, shape: &[Dim]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Symbol(s) => dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    #[test]
    fn a_tiny_graph_round_trips_through_tract() -> TractResult<()> {
        let mut g = GraphBuilder::new("affine");
        let x = g.input_f32("x", &[Dim::Symbol("batch".into()), Dim::Fixed(2)]);
        let w = g.constant_f32("w", &[2], &[2.0, 3.0]);
        let axes = g.constant_i64("axes", &[1], &[1]);
        let y = g.node("Mul", &[&x, &w], "y", vec![]);
        g.node("ReduceSum", &[&y, &axes], "out", vec![attr_int("keepdims", 0)]);
        g.output_f32("out", &[Dim::Symbol("batch".into())]);
        let bytes = encode(&g.finish("test")?);
        let plan = tract_onnx::onnx().model_for_read(&mut &bytes[..])?.into_optimized()?.into_runnable()?;
        let input = Tensor::from_shape(&[2, 2], &[1.0f32, 1.0, 0.5, -1.0])?;
        let out = plan.run(tvec!(input.into()))?;
        assert_eq!(out[0].try_as_plain_ram()?.as_slice::<f32>()?, &[5.0, -2.0]);
        Ok(())
    }

    #[test]
    fn reading_an_undefined_value_or_missing_output_is_refused() {
        let mut g = GraphBuilder::new("broken");
        let x = g.input_f32("x", &[Dim::Fixed(1)]);
        g.node("Add", &[&x, "nowhere"], "y", vec![]);
        g.output_f32("z", &[Dim::Fixed(1)]);
        let err = g.finish("").unwrap_err().to_string();
        assert!(err.contains("nowhere") && err.contains("`z` is never computed"), "{err}");
    }
}
