//! Element-wise preprocessing: `Scaler` (StandardScaler, MaxAbsScaler, RobustScaler),
//! `Binarizer` and `Imputer` (SimpleImputer).
//!
//! All three read a row of features at a time: a per-feature attribute list applies to the last
//! axis the way onnxruntime indexes it, `i % stride` over the flat data with the stride taken from
//! dimension 1 (dimension 0 of a vector).

use super::{built, describe, elementwise_rules, list, slice, tensor_of, Built, Kernel};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Registers `Scaler`, `Binarizer` and `Imputer`.
pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("Scaler", scaler);
    reg.insert("Binarizer", binarizer);
    reg.insert("Imputer", imputer);
}

/// The stride of the per-feature lists: dimension 1, or the length of a vector.
fn stride(op: &str, shape: &[usize]) -> TractResult<usize> {
    match shape {
        [] => bail!("{op}: input is a scalar; it needs at least one dimension of features"),
        [n] => Ok(*n),
        [_, c, ..] => Ok(*c),
    }
}

/// The per-feature value of flat element `i`: one value for all, or one per feature.
fn per_feature<T: Copy>(values: &[T], i: usize, stride: usize) -> T {
    if values.len() == 1 {
        values[0]
    } else {
        values[i % stride]
    }
}

/// Checks that a per-feature list has one value or one per feature.
fn check_len(op: &str, attr: &str, len: usize, stride: usize) -> TractResult<()> {
    if len != 1 && len != stride {
        bail!("{op}: `{attr}` has {len} values but the input has {stride} features; it needs 1 or {stride}")
    }
    Ok(())
}

/// `Y = (X - offset) * scale`, as float.
#[derive(Debug)]
struct Scaler {
    name: String,
    offset: Vec<f32>,
    scale: Vec<f32>,
}

fn scaler(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let scale: Vec<f32> = list(node, "scale")?;
    let offset: Vec<f32> = list(node, "offset")?;
    if scale.is_empty() || scale.len() != offset.len() {
        bail!("{name}: `scale` ({}) and `offset` ({}) need the same, non-zero length", scale.len(), offset.len());
    }
    built(Scaler { name, offset, scale })
}

impl Kernel for Scaler {
    fn op_type(&self) -> &'static str {
        "Scaler"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        elementwise_rules(s, inputs, outputs, Some(DatumType::F32))
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let stride = stride(&self.name, x.shape())?;
        check_len(&self.name, "scale", self.scale.len(), stride)?;
        let y: Vec<f32> = if x.datum_type() == DatumType::F64 {
            // Double inputs are scaled in double, then rounded once, as onnxruntime does.
            let data = slice::<f64>(x)?;
            (0..data.len())
                .map(|i| {
                    let (o, s) = (per_feature(&self.offset, i, stride), per_feature(&self.scale, i, stride));
                    ((data[i] - o as f64) * s as f64) as f32
                })
                .collect()
        } else {
            let x = super::floats(&self.name, x)?;
            let data = slice::<f32>(&x)?;
            (0..data.len())
                .map(|i| (data[i] - per_feature(&self.offset, i, stride)) * per_feature(&self.scale, i, stride))
                .collect()
        };
        Ok(tvec!(tensor_of(x.shape(), y)?))
    }
}

/// `Y = X > threshold ? 1 : 0`, in the type of `X`.
#[derive(Debug)]
struct Binarizer {
    name: String,
    threshold: f32,
}

fn binarizer(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let threshold = node.get_attr_opt::<f32>("threshold")?.unwrap_or(0.0);
    built(Binarizer { name: describe(node), threshold })
}

impl Kernel for Binarizer {
    fn op_type(&self) -> &'static str {
        "Binarizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        elementwise_rules(s, inputs, outputs, None)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(TypedFact::dt_shape(inputs[0].datum_type, inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if inputs[0].datum_type() == DatumType::TDim {
            return via_int64(inputs, |i| self.eval(i));
        }
        let x = &inputs[0];
        let t = self.threshold;
        // NaN compares false and becomes 0, as the spec's "greater than" says (onnxruntime refuses
        // the whole input instead).
        let y = match x.datum_type() {
            DatumType::F32 => map(x, |v: f32| if v > t { 1.0 } else { 0.0 })?,
            DatumType::F64 => map(x, |v: f64| if v > t as f64 { 1.0 } else { 0.0 })?,
            DatumType::I64 => map(x, |v: i64| i64::from(v as f32 > t))?,
            DatumType::I32 => map(x, |v: i32| i32::from(v as f32 > t))?,
            other => bail!("{}: input must be float, double, int64 or int32, got {other:?}", self.name),
        };
        Ok(tvec!(y))
    }
}

/// Runs `eval` on tract's symbolic integers (`TDim`, what tract makes of ONNX int64 casts) as
/// int64, and gives the result back in that type, as the output facts promise.
fn via_int64(
    inputs: TVec<TValue>,
    eval: impl Fn(TVec<TValue>) -> TractResult<TVec<TValue>>,
) -> TractResult<TVec<TValue>> {
    let x = inputs[0].cast_to::<i64>()?.into_owned().into_tvalue();
    eval(tvec!(x))?.into_iter().map(|y| Ok(y.cast_to_dt(DatumType::TDim)?.into_owned().into_tvalue())).collect()
}

fn map<T: Datum + Copy>(x: &Tensor, f: impl Fn(T) -> T) -> TractResult<TValue> {
    tensor_of(x.shape(), slice::<T>(x)?.iter().map(|v| f(*v)).collect())
}

/// Replaces `replaced_value_*` (NaN matches NaN) with the per-feature `imputed_value_*`.
#[derive(Debug)]
enum Imputer {
    Floats { name: String, replaced: f32, imputed: Vec<f32> },
    Ints { name: String, replaced: i64, imputed: Vec<i64> },
}

/// The imputed value of flat element `i`: per feature when there is one per feature, otherwise
/// the first (onnxruntime does not refuse other lengths).
fn imputed_value<T: Copy>(values: &[T], i: usize, stride: usize) -> T {
    if values.len() == stride {
        values[i % stride]
    } else {
        values[0]
    }
}

fn imputer(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let floats: Vec<f32> = list(node, "imputed_value_floats")?;
    let ints: Vec<i64> = list(node, "imputed_value_int64s")?;
    match (floats.is_empty(), ints.is_empty()) {
        (false, true) => {
            let replaced = node.get_attr_opt::<f32>("replaced_value_float")?.unwrap_or(0.0);
            built(Imputer::Floats { name, replaced, imputed: floats })
        }
        (true, false) => {
            let replaced = node.get_attr_opt::<i64>("replaced_value_int64")?.unwrap_or(0);
            built(Imputer::Ints { name, replaced, imputed: ints })
        }
        _ => bail!("{name}: exactly one of `imputed_value_floats` and `imputed_value_int64s` must be given"),
    }
}

impl Kernel for Imputer {
    fn op_type(&self) -> &'static str {
        "Imputer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        elementwise_rules(s, inputs, outputs, None)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(TypedFact::dt_shape(inputs[0].datum_type, inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if inputs[0].datum_type() == DatumType::TDim {
            return via_int64(inputs, |i| self.eval(i));
        }
        let x = &inputs[0];
        let y = match (self, x.datum_type()) {
            (Imputer::Floats { name, replaced, imputed }, DatumType::F32) => {
                let stride = stride(name, x.shape())?;
                let nan = replaced.is_nan();
                let data = slice::<f32>(x)?;
                let out = (0..data.len())
                    .map(|i| {
                        let v = data[i];
                        if (nan && v.is_nan()) || v == *replaced {
                            imputed_value(imputed, i, stride)
                        } else {
                            v
                        }
                    })
                    .collect();
                tensor_of(x.shape(), out)?
            }
            (Imputer::Ints { name, replaced, imputed }, DatumType::I64) => {
                let stride = stride(name, x.shape())?;
                let data = slice::<i64>(x)?;
                let out =
                    (0..data.len())
                        .map(|i| if data[i] == *replaced { imputed_value(imputed, i, stride) } else { data[i] });
                tensor_of(x.shape(), out.collect())?
            }
            (Imputer::Floats { name, .. }, other) => {
                bail!("{name}: imputes float values, but the input is {other:?}; feed float32")
            }
            (Imputer::Ints { name, .. }, other) => {
                bail!("{name}: imputes int64 values, but the input is {other:?}; feed int64")
            }
        };
        Ok(tvec!(y))
    }
}
