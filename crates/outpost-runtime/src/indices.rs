//! Which values an integer input may take because the model uses it to index a table.
//!
//! A token id past the end of an embedding table is not a model error but a client one, and
//! synthetic inputs (self-tests, benchmarks) must stay inside the table too: tract indexes the
//! table unchecked and panics, ONNX Runtime fails the run with a message about a node the client
//! never heard of. Both need the same fact — "`input_ids` indexes the 30522 rows of
//! `word_embeddings`" — so it is found once, here, by following each integer graph input through
//! the operators that pass its values along unchanged (casts, reshapes) to the operators that use
//! them as indices.
//!
//! The walk reads the protobuf only, without tract's type analysis, so it also answers for graphs
//! tract cannot load (contrib operators, ONNX Runtime only). When a bound cannot be proven (a
//! table whose size is only known at run time) there is simply no entry: a missing range never
//! refuses a request.

use crate::{RuntimeError, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::{DatumType, Framework};

/// The values an integer input may take, and the table that bounds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRange {
    /// Smallest value generated inputs use; always 0, as negative indices only repeat rows.
    pub min: i64,
    /// Largest valid value, inclusive.
    pub max: i64,
    /// Whether `-(max + 1)..=-1` is valid too (ONNX `Gather` counts negative indices from the end).
    pub allow_negative: bool,
    /// Why, e.g. "rows of `word_embeddings.weight` (Gather)".
    pub source: String,
}

impl IndexRange {
    /// The smallest value a request may carry.
    pub fn lowest_valid(&self) -> i64 {
        if self.allow_negative {
            self.max.saturating_add(1).saturating_neg()
        } else {
            self.min
        }
    }

    /// Both constraints at once: the tighter bound wins and names the source.
    fn intersect(self, other: IndexRange) -> IndexRange {
        let allow_negative = self.allow_negative && other.allow_negative;
        let (tighter, looser) = if other.max < self.max { (other, self) } else { (self, other) };
        IndexRange { min: tighter.min.max(looser.min), allow_negative, ..tighter }
    }
}

impl fmt::Display for IndexRange {
    /// `0..=30521 (rows of `w` (Gather))`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={} ({})", self.lowest_valid(), self.max, self.source)
    }
}

/// Index ranges of the integer inputs of an ONNX model, by input name; empty when the bytes are not
/// a model (loading reports that properly).
pub fn index_ranges(onnx: &[u8]) -> BTreeMap<String, IndexRange> {
    let Ok(proto) = tract_onnx::onnx().proto_model_for_read(&mut &onnx[..]) else { return BTreeMap::new() };
    proto.graph.as_ref().map(graph_index_ranges).unwrap_or_default()
}

/// Index ranges of the integer inputs of one (main) graph.
pub fn graph_index_ranges(graph: &GraphProto) -> BTreeMap<String, IndexRange> {
    let facts = GraphFacts::of(graph);
    let mut ranges = BTreeMap::new();
    for input in &graph.input {
        if facts.initializers.contains_key(input.name.as_str()) || !facts.is_integer(&input.name) {
            continue;
        }
        if let Some(range) = facts.range_of(&input.name) {
            ranges.insert(input.name.clone(), range);
        }
    }
    ranges
}

/// Lookups over one graph, built once.
struct GraphFacts<'g> {
    initializers: HashMap<&'g str, &'g TensorProto>,
    producers: HashMap<&'g str, &'g NodeProto>,
    consumers: HashMap<&'g str, Vec<(&'g NodeProto, usize)>>,
    /// Declared dims of inputs, outputs and `value_info` entries; `None` where symbolic.
    shapes: HashMap<&'g str, Vec<Option<i64>>>,
    elem_types: HashMap<&'g str, i32>,
}

/// Operators whose first input's values reach their first output unchanged (only rearranged or
/// repeated), so an index bound on the output binds the input too.
const VALUE_PRESERVING: &[&str] =
    &["Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Transpose", "Cast"];

/// Operators through which a table keeps its shape, walking back from a `Gather` to a weight.
const SHAPE_PRESERVING: &[&str] = &["DequantizeLinear", "Cast", "Identity"];

/// Longest chain walked back from a `Gather` to its table, so a cyclic (malformed) graph cannot
/// loop forever.
const MAX_CHAIN: usize = 64;

impl<'g> GraphFacts<'g> {
    fn of(graph: &'g GraphProto) -> GraphFacts<'g> {
        let mut facts = GraphFacts {
            initializers: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
            producers: HashMap::new(),
            consumers: HashMap::new(),
            shapes: HashMap::new(),
            elem_types: HashMap::new(),
        };
        for node in &graph.node {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                facts.producers.insert(out, node);
            }
            for (slot, input) in node.input.iter().enumerate().filter(|(_, i)| !i.is_empty()) {
                facts.consumers.entry(input).or_default().push((node, slot));
            }
        }
        for v in graph.value_info.iter().chain(&graph.input).chain(&graph.output) {
            let Some(TypeValue::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else { continue };
            facts.elem_types.insert(&v.name, t.elem_type);
            if let Some(shape) = &t.shape {
                let dims = shape
                    .dim
                    .iter()
                    // Some exporters write 0 for "unknown"; a real table is never declared empty.
                    .map(|d| match d.value {
                        Some(DimValue::DimValue(n)) if n > 0 => Some(n),
                        _ => None,
                    })
                    .collect();
                facts.shapes.insert(&v.name, dims);
            }
        }
        facts
    }

    fn is_integer(&self, name: &str) -> bool {
        self.elem_types.get(name).is_some_and(|t| is_integer_type(*t))
    }

    /// Follows `input` forward to every use as indices and intersects what they allow.
    fn range_of(&self, input: &str) -> Option<IndexRange> {
        let mut found: Option<IndexRange> = None;
        let mut seen: HashSet<&str> = HashSet::from([input]);
        let mut pending: VecDeque<&str> = VecDeque::from([input]);
        while let Some(value) = pending.pop_front() {
            for &(node, slot) in self.consumers.get(value).into_iter().flatten() {
                if slot == 0 && passes_values_on(node) {
                    if let Some(out) = node.output.first().filter(|o| !o.is_empty()) {
                        if seen.insert(out) {
                            pending.push_back(out);
                        }
                    }
                    continue;
                }
                if let Some(range) = self.use_as_indices(node, slot) {
                    found = Some(match found {
                        Some(prev) => prev.intersect(range),
                        None => range,
                    });
                }
            }
        }
        found
    }

    /// The range a node allows for its input `slot`, when it uses that input as indices.
    fn use_as_indices(&self, node: &NodeProto, slot: usize) -> Option<IndexRange> {
        let op = node.op_type.as_str();
        match (op, slot) {
            ("Gather" | "GatherElements", 1) if is_default_domain(node) => {
                let axis = int_attr(node, "axis").unwrap_or(0);
                let (n, table) = self.axis_size(node.input.first()?, axis)?;
                let what = if axis == 0 { "rows".to_string() } else { format!("axis {axis}") };
                Some(bounded(n, true, format!("{what} of `{table}` ({op})")))
            }
            // ONNX Runtime checks these ids against [0, rows) and refuses negative ones.
            ("EmbedLayerNormalization", 0 | 1 | 8) if node.domain == "com.microsoft" => {
                let table_slot = match slot {
                    0 => 2,
                    1 => 4,
                    _ => 3,
                };
                let (n, table) = self.axis_size(node.input.get(table_slot).filter(|t| !t.is_empty())?, 0)?;
                Some(bounded(n, false, format!("rows of `{table}` ({op})")))
            }
            // ONNX gives out-of-range one-hot indices an all-`off` row, but tract writes them out of
            // bounds; refusing them is the safe reading on every backend.
            ("OneHot", 0) if is_default_domain(node) => {
                let depth = self.constant_scalar(node.input.get(1)?)?;
                Some(bounded(depth, true, format!("depth {depth} of `{}` (OneHot)", node.name)))
            }
            _ => None,
        }
    }

    /// Size of `value` along `axis`, and the name of the tensor that fixes it: an initializer, a
    /// constant, a weight behind a dequantisation or cast, or else a declared static shape.
    fn axis_size(&self, value: &'g str, axis: i64) -> Option<(i64, &'g str)> {
        let mut name = value;
        // The weight itself names the table best; a declared shape on the way is the fallback.
        let mut declared = None;
        for _ in 0..MAX_CHAIN {
            let producer = self.producers.get(name);
            let constant = producer.filter(|n| n.op_type == "Constant").and_then(|n| tensor_attr(n, "value"));
            if let Some(t) = self.initializers.get(name).copied().or(constant) {
                let dims: Vec<Option<i64>> = t.dims.iter().map(|d| Some(*d)).collect();
                return dim_at(&dims, axis).map(|n| (n, name));
            }
            if declared.is_none() {
                declared = self.shapes.get(name).and_then(|dims| dim_at(dims, axis)).map(|n| (n, name));
            }
            let next = producer
                .filter(|n| is_default_domain(n) && SHAPE_PRESERVING.contains(&n.op_type.as_str()))
                .and_then(|n| n.input.first());
            match next {
                Some(input) => name = input,
                None => break,
            }
        }
        declared
    }

    /// A single integer held by an initializer or a `Constant` node (`OneHot`'s depth).
    fn constant_scalar(&self, name: &str) -> Option<i64> {
        if let Some(t) = self.initializers.get(name) {
            return tensor_scalar(t);
        }
        let node = self.producers.get(name).filter(|n| n.op_type == "Constant")?;
        if let Some(t) = tensor_attr(node, "value") {
            return tensor_scalar(t);
        }
        int_attr(node, "value_int")
    }
}

fn bounded(n: i64, allow_negative: bool, source: String) -> IndexRange {
    IndexRange { min: 0, max: n.saturating_sub(1), allow_negative, source }
}

fn is_default_domain(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

fn passes_values_on(node: &NodeProto) -> bool {
    if !is_default_domain(node) || !VALUE_PRESERVING.contains(&node.op_type.as_str()) {
        return false;
    }
    // A cast to float ends the walk: floats are not used as indices.
    node.op_type != "Cast" || int_attr(node, "to").and_then(|t| i32::try_from(t).ok()).is_some_and(is_integer_type)
}

fn is_integer_type(onnx_type: i32) -> bool {
    use DataType::*;
    matches!(DataType::try_from(onnx_type), Ok(Int8 | Int16 | Int32 | Int64 | Uint8 | Uint16 | Uint32 | Uint64))
}

fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn tensor_attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n TensorProto> {
    node.attribute.iter().find(|a| a.name == name).and_then(|a| a.t.as_ref())
}

/// `dims[axis]`, counting a negative axis from the end; `None` when unknown or out of range.
fn dim_at(dims: &[Option<i64>], axis: i64) -> Option<i64> {
    let rank = i64::try_from(dims.len()).ok()?;
    let axis = if axis < 0 { axis.checked_add(rank)? } else { axis };
    usize::try_from(axis).ok().and_then(|a| dims.get(a).copied().flatten())
}

/// The one element of a scalar or one-element tensor of any numeric type, as an integer.
fn tensor_scalar(t: &TensorProto) -> Option<i64> {
    if t.dims.iter().try_fold(1i64, |n, d| n.checked_mul(*d)) != Some(1) {
        return None;
    }
    if let Some(v) = t.int64_data.first() {
        return Some(*v);
    }
    if let Some(v) = t.int32_data.first() {
        return Some(i64::from(*v));
    }
    if let Some(v) = t.float_data.first() {
        return float_to_int(f64::from(*v));
    }
    if let Some(v) = t.double_data.first() {
        return float_to_int(*v);
    }
    if let Some(v) = t.uint64_data.first() {
        return i64::try_from(*v).ok();
    }
    fn le<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
        raw.get(..N)?.try_into().ok()
    }
    let raw = t.raw_data.as_slice();
    use DataType::*;
    match DataType::try_from(t.data_type).ok()? {
        Int64 => Some(i64::from_le_bytes(le(raw)?)),
        Uint64 => i64::try_from(u64::from_le_bytes(le(raw)?)).ok(),
        Int32 => Some(i64::from(i32::from_le_bytes(le(raw)?))),
        Uint32 => Some(i64::from(u32::from_le_bytes(le(raw)?))),
        Float => float_to_int(f64::from(f32::from_le_bytes(le(raw)?))),
        Double => float_to_int(f64::from_le_bytes(le(raw)?)),
        _ => None,
    }
}

fn float_to_int(v: f64) -> Option<i64> {
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15).then_some(v as i64)
}

/// Checks request tensors against the index ranges, naming the first value out of range.
///
/// A linear scan over each bounded input (about a microsecond for 512 ids); inputs without a
/// range, and tensors that are not integers, pass untouched — their type is checked elsewhere.
pub fn check_indices(ranges: &BTreeMap<String, IndexRange>, inputs: &[(&str, &Tensor)]) -> Result<(), RuntimeError> {
    for (name, tensor) in inputs {
        let Some(range) = ranges.get(*name) else { continue };
        let (lo, hi) = (range.lowest_valid(), range.max);
        let found = match tensor.datum_type() {
            DatumType::I64 => first_outside::<i64>(tensor, lo, hi),
            DatumType::I32 => first_outside::<i32>(tensor, lo, hi),
            DatumType::I16 => first_outside::<i16>(tensor, lo, hi),
            DatumType::I8 => first_outside::<i8>(tensor, lo, hi),
            DatumType::U64 => first_outside_u64(tensor, lo, hi),
            DatumType::U32 => first_outside::<u32>(tensor, lo, hi),
            DatumType::U16 => first_outside::<u16>(tensor, lo, hi),
            DatumType::U8 => first_outside::<u8>(tensor, lo, hi),
            _ => None,
        };
        if let Some((flat, value)) = found {
            let position = unravel(flat, tensor.shape());
            return Err(RuntimeError::BadInput {
                tensor: name.to_string(),
                reason: format!("value {value} at {position:?} is outside {range}"),
            });
        }
    }
    Ok(())
}

/// Flat index and value of the first element outside `lo..=hi`.
fn first_outside<T>(tensor: &Tensor, lo: i64, hi: i64) -> Option<(usize, i128)>
where
    T: tract_onnx::prelude::Datum + Copy + Into<i64>,
{
    let values = crate::tensor::values::<T>(tensor).ok()?;
    let inside = |v: &T| {
        let v: i64 = (*v).into();
        (v >= lo) & (v <= hi)
    };
    // A branch-free pass over valid data (the common case) vectorises; only a request that fails
    // pays for finding where.
    if values.iter().fold(true, |all, v| all & inside(v)) {
        return None;
    }
    values.iter().position(|v| !inside(v)).map(|i| (i, i128::from(values[i].into())))
}

/// [`first_outside`] for `u64`, whose values above `i64::MAX` are out of every range.
fn first_outside_u64(tensor: &Tensor, lo: i64, hi: i64) -> Option<(usize, i128)> {
    let values = crate::tensor::values::<u64>(tensor).ok()?;
    let inside = |v: &u64| i64::try_from(*v).is_ok_and(|v| (lo..=hi).contains(&v));
    values.iter().position(|v| !inside(v)).map(|i| (i, i128::from(values[i])))
}

/// The coordinates of the `flat`-th element of a C-order tensor of `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut coords = vec![0; shape.len()];
    for (c, d) in coords.iter_mut().zip(shape).rev() {
        if *d > 0 {
            *c = flat % d;
            flat /= d;
        }
    }
    coords
}

#[cfg(test)]
mod tests;
