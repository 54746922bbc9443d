//! Feature plumbing: `ArrayFeatureExtractor` (column selection in ColumnTransformer and label
//! lookups), `FeatureVectorizer` (concatenating feature blocks) and `OneHotEncoder`.

use super::{built, describe, list, rows_rule, slice, tensor_of, Built, Kernel};
use std::collections::HashMap;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Registers `ArrayFeatureExtractor`, `FeatureVectorizer` and `OneHotEncoder`.
pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("ArrayFeatureExtractor", array_feature_extractor);
    reg.insert("FeatureVectorizer", feature_vectorizer);
    reg.insert("OneHotEncoder", one_hot_encoder);
}

/// `Z = X[..., Y]`: picks the columns `Y` (int64) of the last axis of `X`. A vector `X` gives one
/// row, `[1, len(Y)]`, as onnxruntime has always answered.
#[derive(Debug)]
struct ArrayFeatureExtractor {
    name: String,
}

fn array_feature_extractor(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    built(ArrayFeatureExtractor { name: describe(node) })
}

fn extracted_shape<D: Clone>(x: &[D], n: D, one: D) -> TVec<D> {
    match x {
        [_] => tvec!(one, n),
        _ => {
            let mut shape: TVec<D> = x.into();
            if let Some(last) = shape.last_mut() {
                *last = n;
            }
            shape
        }
    }
}

impl Kernel for ArrayFeatureExtractor {
    fn op_type(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, x, y| {
            let n = y.iter().fold(1.to_dim(), |a, d| a * d.clone());
            s.equals(&outputs[0].shape, ShapeFactoid::from(extracted_shape(&x, n, 1.to_dim())))
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        if x.is_empty() {
            bail!("{}: X is a scalar; it needs an axis of features", self.name);
        }
        let n = inputs[1].shape.iter().fold(1.to_dim(), |a, d| a * d.clone());
        Ok(tvec!(TypedFact::dt_shape(inputs[0].datum_type, extracted_shape(&x, n, 1.to_dim()))))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, y) = (&inputs[0], &inputs[1]);
        let Some(&stride) = x.shape().last() else {
            bail!("{}: X is a scalar; it needs an axis of features", self.name);
        };
        let indices = slice::<i64>(&*y.cast_to::<i64>()?)?.to_vec();
        if indices.is_empty() {
            bail!("{}: Y selects no column", self.name);
        }
        let columns = indices
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|i| *i < stride)
                    .ok_or_else(|| format_err!("{}: Y asks for column {i} but X has {stride} columns", self.name))
            })
            .collect::<TractResult<Vec<usize>>>()?;
        let shape = extracted_shape(x.shape(), columns.len(), 1);
        fn pick<T: Datum + Clone>(
            x: &Tensor,
            stride: usize,
            columns: &[usize],
            shape: &[usize],
        ) -> TractResult<TValue> {
            let data = slice::<T>(x)?;
            let rows = data.len().checked_div(stride).unwrap_or(0);
            let mut out = Vec::with_capacity(rows * columns.len());
            for row in data.chunks(stride.max(1)).take(rows) {
                out.extend(columns.iter().map(|c| row[*c].clone()));
            }
            tensor_of(shape, out)
        }
        let z = match x.datum_type() {
            DatumType::F32 => pick::<f32>(x, stride, &columns, &shape)?,
            DatumType::F64 => pick::<f64>(x, stride, &columns, &shape)?,
            DatumType::I64 => pick::<i64>(x, stride, &columns, &shape)?,
            DatumType::I32 => pick::<i32>(x, stride, &columns, &shape)?,
            DatumType::String => pick::<String>(x, stride, &columns, &shape)?,
            DatumType::TDim => pick::<TDim>(x, stride, &columns, &shape)?,
            other => bail!("{}: X must be float, double, int64, int32 or string, got {other:?}", self.name),
        };
        Ok(tvec!(z))
    }
}

/// Concatenates its inputs, row by row, into `[N, sum(inputdimensions)]` floats; each input
/// contributes its first `inputdimensions[i]` values per row, zero-padded when it has fewer.
#[derive(Debug)]
struct FeatureVectorizer {
    name: String,
    dims: Vec<usize>,
}

fn feature_vectorizer(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let dims: Vec<usize> = list(node, "inputdimensions")?;
    if dims.len() != node.input.len() {
        bail!("{name}: `inputdimensions` has {} values for {} inputs", dims.len(), node.input.len());
    }
    built(FeatureVectorizer { name, dims })
}

impl Kernel for FeatureVectorizer {
    fn op_type(&self) -> &'static str {
        "FeatureVectorizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.dims.len())?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[1], self.dims.iter().sum::<usize>().to_dim())?;
        rows_rule(s, &inputs[0], &outputs[0])
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = if inputs[0].rank() <= 1 { 1.to_dim() } else { inputs[0].shape[0].clone() };
        Ok(tvec!(f32::fact(&[rows, self.dims.iter().sum::<usize>().to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let rows_of = |t: &Tensor| if t.rank() <= 1 { 1 } else { t.shape()[0] };
        let n = inputs.first().map_or(1, |t| rows_of(t));
        let total: usize = self.dims.iter().sum();
        let mut out = vec![0f32; n * total];
        let mut offset = 0;
        for (ix, (input, &dim)) in inputs.iter().zip(&self.dims).enumerate() {
            if rows_of(input) != n {
                bail!("{}: input {ix} has {} rows, input 0 has {n}", self.name, rows_of(input));
            }
            let x = super::floats(&self.name, input)?;
            let data = slice::<f32>(&x)?;
            let per_row = data.len().checked_div(n).unwrap_or(0);
            for (r, row) in data.chunks(per_row.max(1)).take(n).enumerate() {
                let width = per_row.min(dim);
                out[r * total + offset..][..width].copy_from_slice(&row[..width]);
            }
            offset += dim;
        }
        Ok(tvec!(tensor_of(&[n, total], out)?))
    }
}

/// One-hot encoding over `cats_int64s` (numbers are truncated to int64 first) or `cats_strings`:
/// appends an axis of the category count. An unknown value is all zeros, or an error when
/// `zeros` is 0.
#[derive(Debug)]
struct OneHotEncoder {
    name: String,
    ints: HashMap<i64, usize>,
    strings: HashMap<String, usize>,
    count: usize,
    zeros: bool,
}

fn one_hot_encoder(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let ints: Vec<i64> = list(node, "cats_int64s")?;
    let strings: Vec<String> = list(node, "cats_strings")?;
    let zeros = node.get_attr_opt::<i64>("zeros")?.unwrap_or(1) != 0;
    let count = match (ints.is_empty(), strings.is_empty()) {
        (false, true) => ints.len(),
        (true, false) => strings.len(),
        _ => bail!("{name}: exactly one of `cats_int64s` and `cats_strings` must be given"),
    };
    // A repeated category keeps its last position, as onnxruntime's map does.
    let ints = ints.into_iter().enumerate().map(|(i, v)| (v, i)).collect();
    let strings = strings.into_iter().enumerate().map(|(i, v)| (v, i)).collect();
    built(OneHotEncoder { name, ints, strings, count, zeros })
}

impl Kernel for OneHotEncoder {
    fn op_type(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        let count = self.count.to_dim();
        s.given(&inputs[0].shape, move |s, shape| {
            let mut out = shape;
            out.push(count.clone());
            s.equals(&outputs[0].shape, ShapeFactoid::from(out))
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        shape.push(self.count.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = super::int64s(&inputs[0])?;
        let positions: Vec<Option<usize>> = match x.datum_type() {
            DatumType::String => slice::<String>(&x)?.iter().map(|v| self.strings.get(v).copied()).collect(),
            DatumType::I64 => slice::<i64>(&x)?.iter().map(|v| self.ints.get(v).copied()).collect(),
            DatumType::I32 => slice::<i32>(&x)?.iter().map(|v| self.ints.get(&(*v as i64)).copied()).collect(),
            DatumType::F32 => slice::<f32>(&x)?.iter().map(|v| self.ints.get(&(*v as i64)).copied()).collect(),
            DatumType::F64 => slice::<f64>(&x)?.iter().map(|v| self.ints.get(&(*v as i64)).copied()).collect(),
            other => bail!("{}: input must be string, int64, int32, float or double, got {other:?}", self.name),
        };
        let mut out = vec![0f32; positions.len() * self.count];
        for (i, position) in positions.iter().enumerate() {
            match position {
                Some(p) => out[i * self.count + p] = 1.0,
                None if self.zeros => {}
                None => bail!("{}: element {i} is not a known category and `zeros` is 0", self.name),
            }
        }
        let mut shape: TVec<usize> = x.shape().into();
        shape.push(self.count);
        Ok(tvec!(tensor_of(&shape, out)?))
    }
}
