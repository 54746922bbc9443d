//! `LabelEncoder`: maps each element through a key → value table.
//!
//! Opset 1 maps strings to their position in `classes_strings` and back; opsets 2 to 4 give the
//! table as `keys_*`/`values_*` lists (or, from opset 4, `keys_tensor`/`values_tensor`) with a
//! `default_*` for keys not in it. skl2onnx's IsolationForest uses int64 → float tables to turn
//! leaf ids into path lengths; string class labels use string tables.

use super::{built, describe, elementwise_rules, slice, tensor_of, Built, Kernel};
use std::collections::HashMap;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Registers `LabelEncoder`.
pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("LabelEncoder", label_encoder);
}

/// A float as a hash key: NaN matches NaN (as opset 4 specifies) and -0 matches 0 (as `==` does).
fn float_key(v: f64) -> u64 {
    if v.is_nan() {
        f64::NAN.to_bits()
    } else if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

/// One side of the table.
#[derive(Debug, Clone)]
enum Column {
    Strings(Vec<String>),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Doubles(Vec<f64>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Strings(v) => v.len(),
            Column::Ints(v) => v.len(),
            Column::Floats(v) => v.len(),
            Column::Doubles(v) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Column::Strings(_) => DatumType::String,
            Column::Ints(_) => DatumType::I64,
            Column::Floats(_) => DatumType::F32,
            Column::Doubles(_) => DatumType::F64,
        }
    }

    /// Values at `positions` (`None` takes the default, which has the column's type).
    fn gather(&self, positions: &[Option<usize>], default: &Column, shape: &[usize]) -> TractResult<TValue> {
        fn pick<T: Datum + Clone>(v: &[T], d: &[T], p: &[Option<usize>], shape: &[usize]) -> TractResult<TValue> {
            let d = d.first().ok_or_else(|| format_err!("LabelEncoder: empty default"))?;
            tensor_of(shape, p.iter().map(|p| p.map_or_else(|| d.clone(), |i| v[i].clone())).collect())
        }
        match (self, default) {
            (Column::Strings(v), Column::Strings(d)) => pick(v, d, positions, shape),
            (Column::Ints(v), Column::Ints(d)) => pick(v, d, positions, shape),
            (Column::Floats(v), Column::Floats(d)) => pick(v, d, positions, shape),
            (Column::Doubles(v), Column::Doubles(d)) => pick(v, d, positions, shape),
            _ => bail!("LabelEncoder: the default value's type differs from the values' type"),
        }
    }
}

/// The lookup side: keys hashed once.
#[derive(Debug)]
enum Index {
    Strings(HashMap<String, usize>),
    Ints(HashMap<i64, usize>),
    Floats(HashMap<u64, usize>),
}

impl Index {
    /// The first position of each key wins, as onnxruntime's `emplace` keeps the first.
    fn of(keys: &Column) -> Index {
        fn first<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = K>) -> HashMap<K, usize> {
            let mut map = HashMap::new();
            for (i, k) in keys.enumerate() {
                map.entry(k).or_insert(i);
            }
            map
        }
        match keys {
            Column::Strings(k) => Index::Strings(first(k.iter().cloned())),
            Column::Ints(k) => Index::Ints(first(k.iter().copied())),
            Column::Floats(k) => Index::Floats(first(k.iter().map(|v| float_key(*v as f64)))),
            Column::Doubles(k) => Index::Floats(first(k.iter().map(|v| float_key(*v)))),
        }
    }
}

#[derive(Debug)]
struct LabelEncoder {
    name: String,
    keys: DatumType,
    index: Index,
    values: Column,
    default: Column,
}

fn tensor_column(ctx: &ParsingContext, node: &NodeProto, attr: &str) -> TractResult<Option<Column>> {
    let Some(proto) = node.get_attr_opt::<&tract_onnx::pb::TensorProto>(attr)? else { return Ok(None) };
    let t = tract_onnx::tensor::load_tensor(ctx.framework.provider.as_ref(), proto, ctx.model_dir)?;
    Ok(Some(match t.datum_type() {
        DatumType::String => Column::Strings(slice::<String>(&t)?.to_vec()),
        DatumType::F32 => Column::Floats(slice::<f32>(&t)?.to_vec()),
        DatumType::F64 => Column::Doubles(slice::<f64>(&t)?.to_vec()),
        dt if dt.is_integer() => Column::Ints(slice::<i64>(&*t.cast_to::<i64>()?)?.to_vec()),
        other => bail!("{}: `{attr}` has type {other:?}; expected string, int64, float or double", describe(node)),
    }))
}

/// The first of `keys_strings`, `keys_int64s`, `keys_floats` (or `values_*`), then `*_tensor`.
fn column(ctx: &ParsingContext, node: &NodeProto, prefix: &str) -> TractResult<Option<Column>> {
    if let Some(v) = node.get_attr_opt_vec::<String>(&format!("{prefix}_strings"))? {
        return Ok(Some(Column::Strings(v)));
    }
    if let Some(v) = node.get_attr_opt_vec::<i64>(&format!("{prefix}_int64s"))? {
        return Ok(Some(Column::Ints(v)));
    }
    if let Some(v) = node.get_attr_opt_vec::<f32>(&format!("{prefix}_floats"))? {
        return Ok(Some(Column::Floats(v)));
    }
    tensor_column(ctx, node, &format!("{prefix}_tensor"))
}

/// The default value for the values' type: `default_tensor`, or `default_<type>` with the spec's
/// defaults (`"_Unused"`, -1, -0.0).
fn default_for(ctx: &ParsingContext, node: &NodeProto, values: &Column) -> TractResult<Column> {
    if let Some(t) = tensor_column(ctx, node, "default_tensor")? {
        if t.datum_type() != values.datum_type() || t.len() != 1 {
            bail!("{}: `default_tensor` must hold one value of the values' type", describe(node));
        }
        return Ok(t);
    }
    Ok(match values {
        Column::Strings(_) => {
            Column::Strings(vec![node.get_attr_opt::<String>("default_string")?.unwrap_or_else(|| "_Unused".into())])
        }
        Column::Ints(_) => Column::Ints(vec![node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1)]),
        Column::Floats(_) => Column::Floats(vec![node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0)]),
        Column::Doubles(_) => Column::Doubles(vec![-0.0]),
    })
}

fn label_encoder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    if let Some(classes) = node.get_attr_opt_vec::<String>("classes_strings")? {
        // Opset 1: which way the table is read depends on the input type, so both are prepared.
        let positions: Vec<i64> = (0..classes.len() as i64).collect();
        let default_int = node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1);
        let default_string = node.get_attr_opt::<String>("default_string")?.unwrap_or_else(|| "_Unused".into());
        return built(LabelEncoderV1 {
            to_int: LabelEncoder {
                name: name.clone(),
                keys: DatumType::String,
                index: Index::of(&Column::Strings(classes.clone())),
                values: Column::Ints(positions.clone()),
                default: Column::Ints(vec![default_int]),
            },
            to_string: LabelEncoder {
                name,
                keys: DatumType::I64,
                index: Index::of(&Column::Ints(positions)),
                values: Column::Strings(classes),
                default: Column::Strings(vec![default_string]),
            },
        });
    }
    let keys = column(ctx, node, "keys")?.ok_or_else(|| format_err!("{name}: no `keys_*` attribute"))?;
    let values = column(ctx, node, "values")?.ok_or_else(|| format_err!("{name}: no `values_*` attribute"))?;
    if keys.len() != values.len() {
        bail!("{name}: {} keys but {} values; they must pair up", keys.len(), values.len());
    }
    let default = default_for(ctx, node, &values)?;
    built(LabelEncoder { name, keys: keys.datum_type(), index: Index::of(&keys), values, default })
}

impl LabelEncoder {
    fn encode(&self, x: &Tensor) -> TractResult<TValue> {
        let positions: Vec<Option<usize>> = match (&self.index, x.datum_type()) {
            (Index::Strings(m), DatumType::String) => slice::<String>(x)?.iter().map(|v| m.get(v).copied()).collect(),
            (Index::Ints(m), DatumType::I64) => slice::<i64>(x)?.iter().map(|v| m.get(v).copied()).collect(),
            (Index::Floats(m), DatumType::F32) => {
                slice::<f32>(x)?.iter().map(|v| m.get(&float_key(*v as f64)).copied()).collect()
            }
            (Index::Floats(m), DatumType::F64) => {
                slice::<f64>(x)?.iter().map(|v| m.get(&float_key(*v)).copied()).collect()
            }
            (_, other) => bail!("{}: keys are {:?} but the input is {other:?}", self.name, self.keys),
        };
        self.values.gather(&positions, &self.default, x.shape())
    }
}

impl Kernel for LabelEncoder {
    fn op_type(&self) -> &'static str {
        "LabelEncoder"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        elementwise_rules(s, inputs, outputs, Some(self.values.datum_type()))
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(TypedFact::dt_shape(self.values.datum_type(), inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(self.encode(&*super::int64s(&inputs[0])?)?))
    }
}

/// Opset 1: strings to their class index, or class indices to strings.
#[derive(Debug)]
struct LabelEncoderV1 {
    to_int: LabelEncoder,
    to_string: LabelEncoder,
}

impl Kernel for LabelEncoderV1 {
    fn op_type(&self) -> &'static str {
        "LabelEncoder"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        s.given(&inputs[0].datum_type, move |s, dt| {
            s.equals(&outputs[0].datum_type, if dt == DatumType::String { DatumType::I64 } else { DatumType::String })
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = if inputs[0].datum_type == DatumType::String { DatumType::I64 } else { DatumType::String };
        Ok(tvec!(TypedFact::dt_shape(dt, inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        if x.datum_type() == DatumType::String {
            Ok(tvec!(self.to_int.encode(x)?))
        } else {
            Ok(tvec!(self.to_string.encode(&*x.cast_to::<i64>()?)?))
        }
    }
}
