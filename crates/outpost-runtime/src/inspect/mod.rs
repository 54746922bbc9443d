//! What an ONNX file contains and whether tract can run it, answered before a device has to try:
//! the engine of `outpost model inspect`.
//!
//! The structural facts (inputs, outputs, parameters, operators, subgraphs) are read straight
//! from the protobuf, so they are reported even for a model tract cannot load — that is exactly
//! when they are needed. The FLOP estimate and the load check go through tract; when either fails
//! the failure is a field of the report, not an error, because "tract cannot type this graph" is
//! the answer the user came for. Only a file that is not an ONNX model at all is an error.
//!
//! tract can panic on some malformed graphs (it indexes by names the file promised), so every
//! call into it is fenced with `catch_unwind`: a hostile file must not take down the CLI or agent.

use crate::backend::tract::TractEngine;
use crate::backend::EngineOptions;
use crate::tensor::dtype_of;
use crate::RuntimeError;
use outpost_proto::manifest::Dim;
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{GraphProto, ModelProto, TensorProto, ValueInfoProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::Cost;
use tract_onnx::tract_hir::internal::Factoid;
pub use unsupported::UnsupportedOp;

/// Everything `outpost model inspect` reports about one ONNX model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    /// ONNX IR version of the file.
    pub ir_version: i64,
    /// Operator set version per domain (`ai.onnx` for the default domain).
    pub opsets: BTreeMap<String, i64>,
    /// Tool that wrote the file.
    pub producer_name: String,
    /// Version of that tool.
    pub producer_version: String,
    /// Name of the main graph.
    pub graph_name: String,
    /// Graph inputs that are not initializers, in graph order.
    pub inputs: Vec<TensorInfo>,
    /// Graph outputs, in graph order.
    pub outputs: Vec<TensorInfo>,
    /// Number of initializers (weights), subgraphs included.
    pub initializers: usize,
    /// Number of weight elements, subgraphs included.
    pub parameters: u64,
    /// Bytes of weights once loaded (elements × element size).
    pub parameter_bytes: u64,
    /// Weights per element type (OIP name where the protocol has one).
    pub parameters_by_dtype: BTreeMap<String, ParameterStats>,
    /// Nodes per operator type, subgraphs included, most frequent first.
    pub op_histogram: Vec<OpCount>,
    /// Operator types tract has no implementation for, subgraphs included, most used first.
    pub unsupported_ops: Vec<UnsupportedOp>,
    /// Operator types carrying subgraphs (`If`, `Loop`, `Scan`) and how many such nodes.
    pub subgraph_ops: BTreeMap<String, usize>,
    /// Estimated floating-point operations of one inference, or why there is no estimate.
    #[serde(serialize_with = "outcome")]
    pub flops: Result<FlopEstimate, String>,
    /// Whether tract types, optimises and plans the model with the given symbols, as the runtime does.
    #[serde(serialize_with = "outcome")]
    pub tract_loads: Result<(), String>,
}

/// Name, element type and declared shape of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type: the OIP name (`FP32`) or, for types the protocol lacks, the ONNX name.
    pub dtype: String,
    /// Declared dimensions, symbols as strings and `?` where unnamed; `None` when undeclared.
    pub shape: Option<Vec<Dim>>,
}

/// Weights of one element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ParameterStats {
    /// Elements.
    pub count: u64,
    /// Bytes.
    pub bytes: u64,
}

/// How many nodes use one operator type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpCount {
    /// ONNX `op_type`.
    pub op_type: String,
    /// Number of nodes.
    pub count: usize,
}

/// Cost of one inference according to tract's per-operator cost model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlopEstimate {
    /// Multiply-adds count two, divisions and other compute one; memory moves count nothing.
    pub total: u64,
    /// Symbols with no given value, taken as 1 for the estimate.
    pub assumed_one: Vec<String>,
    /// The bodies of `If`/`Loop`/`Scan` are not counted (their trip counts are data-dependent).
    pub excludes_subgraphs: bool,
}

/// `Ok(v)` as `{"ok": true, ...v}`, `Err(e)` as `{"ok": false, "error": e}`: friendlier to `jq`
/// than serde's `{"Ok": ...}`.
fn outcome<T: Serialize, S: Serializer>(r: &Result<T, String>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Outcome<'a, T> {
        ok: bool,
        #[serde(flatten)]
        value: Option<&'a T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    }
    match r {
        Ok(v) => Outcome { ok: true, value: Some(v), error: None }.serialize(s),
        Err(e) => Outcome::<T> { ok: false, value: None, error: Some(e) }.serialize(s),
    }
}

impl fmt::Display for ModelReport {
    /// A human table, one fact per line, for `outpost model inspect` without `--json`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
        writeln!(f, "{:<12} `{}` (ir {}, opset {})", "graph", self.graph_name, self.ir_version, opsets.join(", "))?;
        writeln!(f, "{:<12} {} {}", "producer", self.producer_name, self.producer_version)?;
        for (label, list) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (i, t) in list.iter().enumerate() {
                let shape = t.shape.as_ref().map_or_else(
                    || "shape undeclared".to_string(),
                    |s| format!("[{}]", s.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")),
                );
                writeln!(f, "{:<12} {:<24} {:<8} {shape}", if i == 0 { label } else { "" }, t.name, t.dtype)?;
            }
        }
        let by_dtype: Vec<String> = self
            .parameters_by_dtype
            .iter()
            .map(|(dt, p)| format!("{dt} {} ({})", si(p.count), bytes(p.bytes)))
            .collect();
        writeln!(
            f,
            "{:<12} {} ({}) in {} initializers{}",
            "parameters",
            si(self.parameters),
            bytes(self.parameter_bytes),
            self.initializers,
            if by_dtype.is_empty() { String::new() } else { format!(": {}", by_dtype.join(", ")) }
        )?;
        let nodes: usize = self.op_histogram.iter().map(|o| o.count).sum();
        let ops: Vec<String> = self.op_histogram.iter().map(|o| format!("{} {}", o.op_type, o.count)).collect();
        writeln!(f, "{:<12} {nodes} nodes: {}", "operators", ops.join(", "))?;
        let unsupported =
            if self.unsupported_ops.is_empty() { "none".into() } else { unsupported::summary(&self.unsupported_ops) };
        writeln!(f, "{:<12} {unsupported}", "unsupported")?;
        let subgraphs: Vec<String> = self.subgraph_ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        writeln!(f, "{:<12} {}", "subgraphs", if subgraphs.is_empty() { "none".into() } else { subgraphs.join(", ") })?;
        match &self.flops {
            Ok(e) => {
                let mut notes = Vec::new();
                if !e.assumed_one.is_empty() {
                    notes.push(format!("taking {} = 1", e.assumed_one.join(", ")));
                }
                if e.excludes_subgraphs {
                    notes.push("subgraph bodies not counted".into());
                }
                let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
                writeln!(f, "{:<12} {} FLOPs per inference{notes}", "compute", si(e.total))?;
            }
            Err(e) => writeln!(f, "{:<12} unknown: {e}", "compute")?,
        }
        match &self.tract_loads {
            Ok(()) => writeln!(f, "{:<12} loads", "tract"),
            Err(e) => writeln!(f, "{:<12} does not load: {e}", "tract"),
        }
    }
}

/// `1234567` as `1.23 M`, keeping small counts exact.
fn si(n: u64) -> String {
    let x = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.2} k", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} M", x / 1e6),
        _ => format!("{:.2} G", x / 1e9),
    }
}

fn bytes(n: u64) -> String {
    let x = n as f64;
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", x / 1024.0),
        _ => format!("{:.1} MiB", x / 1_048_576.0),
    }
}

/// Inspects an ONNX model held in memory; `symbols` pins symbolic dimensions (`batch = 1`).
pub fn inspect(onnx: &[u8], symbols: &BTreeMap<String, i64>) -> Result<ModelReport, RuntimeError> {
    inspect_named("model", onnx, symbols)
}

/// Inspects the ONNX file at `path`, naming it in every error.
pub fn inspect_file(path: &Path, symbols: &BTreeMap<String, i64>) -> Result<ModelReport, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    inspect_named(&path.display().to_string(), &bytes, symbols)
}

fn inspect_named(name: &str, onnx: &[u8], symbols: &BTreeMap<String, i64>) -> Result<ModelReport, RuntimeError> {
    let model_err = |reason: String| RuntimeError::Model { model: name.to_string(), reason };
    // The graph as the backends will see it (a ZipMap output becomes a probability tensor).
    let prepared = crate::rewrite::prepare(name, onnx)?;
    let onnx = prepared.as_ref();
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &onnx[..])
        .map_err(|e| model_err(format!("not an ONNX model (the protobuf does not decode; truncated?): {e:#}")))?;
    // Random bytes can decode as a protobuf of unknown fields; a model without a graph is not one.
    let graph = proto.graph.as_ref().ok_or_else(|| model_err("not an ONNX model: it has no graph".into()))?;

    let census = Census::of(graph);
    let known = crate::backend::tract::framework().op_register;
    let unsupported_ops = unsupported::unsupported_ops(graph, &known);
    let mut op_histogram: Vec<OpCount> =
        census.ops.iter().map(|(op_type, count)| OpCount { op_type: op_type.clone(), count: *count }).collect();
    op_histogram.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.op_type.cmp(&b.op_type)));

    let initializer_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<TensorInfo> =
        graph.input.iter().filter(|v| !initializer_names.contains(v.name.as_str())).map(tensor_info).collect();

    // tract panics (index out of bounds) on an output nobody produces; say so instead of asking it.
    let blocker = dangling_output(graph)
        .or_else(|| (!unsupported_ops.is_empty()).then(|| unsupported::unsupported_message(&unsupported_ops)));
    let (flops, tract_loads) = match blocker {
        Some(reason) => (Err(reason.clone()), Err(reason)),
        None => {
            let flops = fenced(|| estimate_flops(&proto, &inputs, symbols, !census.subgraph_ops.is_empty()));
            let opts = EngineOptions { model_name: name.to_string(), symbols: symbols.clone(), ..Default::default() };
            let loads = fenced(|| TractEngine::load(onnx, &opts).map(drop).map_err(|e| reason_of(&e)));
            (flops, loads)
        }
    };

    Ok(ModelReport {
        ir_version: proto.ir_version,
        opsets: proto
            .opset_import
            .iter()
            .map(|o| (if o.domain.is_empty() { "ai.onnx".to_string() } else { o.domain.clone() }, o.version))
            .collect(),
        producer_name: proto.producer_name.clone(),
        producer_version: proto.producer_version.clone(),
        graph_name: graph.name.clone(),
        inputs,
        outputs: graph.output.iter().map(tensor_info).collect(),
        initializers: census.initializers,
        parameters: census.params.values().map(|p| p.count).fold(0, u64::saturating_add),
        parameter_bytes: census.params.values().map(|p| p.bytes).fold(0, u64::saturating_add),
        parameters_by_dtype: census.params,
        op_histogram,
        unsupported_ops,
        subgraph_ops: census.subgraph_ops,
        flops,
        tract_loads,
    })
}

/// The cause of a runtime error without the model name the report already shows.
fn reason_of(e: &RuntimeError) -> String {
    match e {
        RuntimeError::Model { reason, .. } | RuntimeError::Unsupported { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Runs tract code, turning a panic into an error message.
pub(crate) fn fenced<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = crate::error::panic_message(panic.as_ref());
        Err(format!("tract panicked on this model: {msg}"))
    })
}

/// Counts over the main graph and every subgraph, walked with an explicit stack so nesting depth
/// cannot overflow ours.
#[derive(Default)]
struct Census {
    ops: HashMap<String, usize>,
    subgraph_ops: BTreeMap<String, usize>,
    initializers: usize,
    params: BTreeMap<String, ParameterStats>,
}

impl Census {
    fn of(main: &GraphProto) -> Census {
        let mut census = Census::default();
        let mut pending = vec![main];
        while let Some(graph) = pending.pop() {
            census.initializers += graph.initializer.len();
            for t in &graph.initializer {
                let (dtype, bytes) = weight_size(t);
                let entry = census.params.entry(dtype).or_default();
                entry.count = entry.count.saturating_add(element_count(&t.dims));
                entry.bytes = entry.bytes.saturating_add(bytes);
            }
            for node in &graph.node {
                *census.ops.entry(node.op_type.clone()).or_default() += 1;
                let before = pending.len();
                for attr in &node.attribute {
                    pending.extend(attr.g.iter().chain(&attr.graphs));
                }
                if pending.len() > before {
                    *census.subgraph_ops.entry(node.op_type.clone()).or_default() += 1;
                }
            }
        }
        census
    }
}

/// Elements of a tensor with these dims; negative dims (malformed) count as empty.
fn element_count(dims: &[i64]) -> u64 {
    dims.iter().map(|d| u64::try_from(*d).unwrap_or(0)).fold(1, u64::saturating_mul)
}

/// Display name and loaded byte size of an initializer.
fn weight_size(t: &TensorProto) -> (String, u64) {
    let n = element_count(&t.dims);
    let name = dtype_name(t.data_type);
    let bytes = match DataType::try_from(t.data_type) {
        Ok(DataType::String) => t.string_data.iter().map(|s| s.len() as u64).sum(),
        Ok(DataType::Uint4 | DataType::Int4 | DataType::Float4e2m1) => n.div_ceil(2),
        Ok(dt) => n.saturating_mul(element_bytes(dt)),
        Err(_) => 0,
    };
    (name, bytes)
}

fn element_bytes(dt: DataType) -> u64 {
    use DataType::*;
    match dt {
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz => 1,
        Uint16 | Int16 | Float16 | Bfloat16 => 2,
        Float | Int32 | Uint32 => 4,
        Int64 | Uint64 | Double | Complex64 => 8,
        Complex128 => 16,
        Undefined | String | Uint4 | Int4 | Float4e2m1 => 0,
    }
}

/// OIP name (`FP32`) when the protocol has the type, else the ONNX name (`BFLOAT16`).
fn dtype_name(onnx_type: i32) -> String {
    let Ok(dt) = DataType::try_from(onnx_type) else { return format!("UNKNOWN({onnx_type})") };
    let tract_dt = match dt {
        DataType::Float => Some(DatumType::F32),
        DataType::Uint8 => Some(DatumType::U8),
        DataType::Int8 => Some(DatumType::I8),
        DataType::Uint16 => Some(DatumType::U16),
        DataType::Int16 => Some(DatumType::I16),
        DataType::Int32 => Some(DatumType::I32),
        DataType::Int64 => Some(DatumType::I64),
        DataType::String => Some(DatumType::String),
        DataType::Bool => Some(DatumType::Bool),
        DataType::Float16 => Some(DatumType::F16),
        DataType::Double => Some(DatumType::F64),
        DataType::Uint32 => Some(DatumType::U32),
        DataType::Uint64 => Some(DatumType::U64),
        _ => None,
    };
    match tract_dt.and_then(dtype_of) {
        Some(d) => d.oip_name().to_string(),
        None => dt.as_str_name().to_string(),
    }
}

fn tensor_info(v: &ValueInfoProto) -> TensorInfo {
    let tensor = v.r#type.as_ref().and_then(|t| t.value.as_ref()).map(|TypeValue::TensorType(t)| t);
    TensorInfo {
        name: v.name.clone(),
        dtype: tensor.map_or_else(|| "UNDEFINED".to_string(), |t| dtype_name(t.elem_type)),
        shape: tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    // Some exporters (Paddle) write -1 or 0 for a size they do not know.
                    Some(DimValue::DimValue(n)) if *n > 0 => Dim::Fixed(*n),
                    Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Symbol(p.clone()),
                    _ => Dim::Symbol("?".into()),
                })
                .collect()
        }),
    }
}

/// A main-graph output that no input, initializer or node provides.
fn dangling_output(graph: &GraphProto) -> Option<String> {
    let mut produced: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    produced.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    produced.extend(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
    let missing: Vec<String> = graph
        .output
        .iter()
        .map(|o| o.name.as_str())
        .filter(|name| !produced.contains(name))
        .map(|name| format!("`{name}`"))
        .collect();
    (!missing.is_empty()).then(|| format!("graph output(s) {} produced by no node", missing.join(", ")))
}

/// Types the graph with symbols pinned and sums tract's per-node cost hints.
///
/// Symbols of the inputs that the caller did not pin, and unnamed input dimensions, are taken as
/// 1 *before* typing, as the bench does, so that shape-dependent graphs resolve (tract cannot
/// prove every symbolic size equal that a concrete one makes equal); symbols that appear later
/// (data-dependent sizes) are taken as 1 when a node's cost is evaluated. All are listed in
/// `assumed_one`.
fn estimate_flops(
    proto: &ModelProto,
    inputs: &[TensorInfo],
    symbols: &BTreeMap<String, i64>,
    has_subgraphs: bool,
) -> Result<FlopEstimate, String> {
    let mut pinned = symbols.clone();
    let mut assumed: BTreeSet<String> = BTreeSet::new();
    for info in inputs {
        for dim in info.shape.iter().flatten() {
            if let Dim::Symbol(s) = dim {
                if is_symbol_name(s) && !pinned.contains_key(s) {
                    pinned.insert(s.clone(), 1);
                    assumed.insert(s.clone());
                }
            }
        }
    }
    let (model, unnamed) =
        typed_model(proto, &pinned).or_else(|first| typed_model_with(proto, &pinned, true).map_err(|_| first))?;
    assumed.extend(unnamed);
    let mut total: u64 = 0;
    for node in model.nodes() {
        let facts = model.node_input_facts(node.id).map_err(|e| format!("node `{}`: {e:#}", node.name))?;
        let costs = node.op.cost(&facts).map_err(|e| format!("cost of node `{}`: {e:#}", node.name))?;
        for (kind, count) in costs {
            let weight = match kind {
                Cost::FMA(_) => 2,
                Cost::Div(_) => 1,
                Cost::Custom(compute, _) => u64::from(compute),
                Cost::Buffer(_) | Cost::Params(_) => 0,
            };
            if weight > 0 {
                let n = concrete(&count, &mut assumed)
                    .ok_or_else(|| format!("cost of node `{}` ({count}) does not reduce to a number", node.name))?;
                total = total.saturating_add(n.saturating_mul(weight));
            }
        }
    }
    Ok(FlopEstimate { total, assumed_one: assumed.into_iter().collect(), excludes_subgraphs: has_subgraphs })
}

/// Whether a `dim_param` is one symbol as tract reads it (`batch`, Paddle's
/// `p2o.DynamicDimension.0`) rather than an expression (`2*seq`) or the unnamed `?`.
fn is_symbol_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The value of a cost, taking any symbol still free as 1.
fn concrete(dim: &TDim, assumed: &mut BTreeSet<String>) -> Option<u64> {
    if let Ok(n) = dim.to_i64() {
        return u64::try_from(n).ok();
    }
    let mut values = SymbolValues::default();
    for sym in dim.symbols() {
        values.set(&sym, 1);
        assumed.insert(sym.to_string());
    }
    dim.eval(&values).to_i64().ok().and_then(|n| u64::try_from(n).ok())
}

fn typed_model(proto: &ModelProto, symbols: &BTreeMap<String, i64>) -> Result<(TypedModel, Vec<String>), String> {
    typed_model_with(proto, symbols, false)
}

/// Parse, pin input symbols, type and declutter: the same first steps as the tract backend, so the
/// estimate describes the graph tract would run (before kernel selection, which changes the
/// bookkeeping but not the arithmetic).
///
/// Input dimensions without a size or a name (`?`; Paddle exports have them) cannot be pinned by
/// name and leave tract nothing to type from, so they are taken as 1 too; they are returned as
/// `input[axis]` for the report.
fn typed_model_with(
    proto: &ModelProto,
    symbols: &BTreeMap<String, i64>,
    ignore_output_shapes: bool,
) -> Result<(TypedModel, Vec<String>), String> {
    let framework = crate::backend::tract::framework().with_ignore_output_shapes(ignore_output_shapes);
    let mut model = framework.model_for_proto_model(proto).map_err(|e| format!("cannot build the graph: {e:#}"))?;
    let mut values = SymbolValues::default();
    for (name, value) in symbols {
        values.set(&model.symbols.sym(name), *value);
    }
    let mut unnamed = Vec::new();
    for ix in 0..model.inputs.len() {
        let mut fact = model.input_fact(ix).map_err(|e| format!("input {ix}: {e:#}"))?.clone();
        if fact.shape.is_open() {
            continue;
        }
        let input = &model.node(model.inputs[ix].node).name;
        let mut pinned: TVec<TDim> = tvec!();
        for (axis, dim) in fact.shape.dims().enumerate() {
            pinned.push(match dim.concretize() {
                Some(d) => d.eval(&values),
                None => {
                    unnamed.push(format!("{input}[{axis}]"));
                    TDim::Val(1)
                }
            });
        }
        fact.shape = pinned.into();
        model.set_input_fact(ix, fact).map_err(|e| format!("pinning symbols: {e:#}"))?;
    }
    let typed = model.into_typed().map_err(|e| format!("type analysis failed: {e:#}"))?;
    let subs: HashMap<Symbol, TDim> = symbols.iter().map(|(k, v)| (typed.symbols.sym(k), TDim::Val(*v))).collect();
    let typed = typed.set_symbols(&subs).map_err(|e| format!("pinning symbols: {e:#}"))?;
    typed.into_decluttered().map(|t| (t, unnamed)).map_err(|e| format!("simplification failed: {e:#}"))
}

pub mod unsupported;

// Tiny ONNX models built from tract's protobuf types, shared with the bench tests.
#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
