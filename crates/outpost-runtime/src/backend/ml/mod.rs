//! scikit-learn's operators (ONNX domain `ai.onnx.ml`) for the tract backend.
//!
//! skl2onnx exports scalers, imputers, tree ensembles, SVMs and encoders as `ai.onnx.ml` operators,
//! and tract implements only a few of them. This module adds the rest, one file per family, and
//! [`register`] puts them into the parser's operator table.
//!
//! The ONNX-ML spec leaves corners open (two-class ensembles with one column of weights, which
//! base value applies, what a lone score becomes), and a model must answer the same on both of our
//! backends, so where the spec is silent these kernels do what onnxruntime's CPU kernels do. Where
//! onnxruntime would fail or read out of bounds on a malformed model, they return an error naming
//! the node instead.
//!
//! Every operator is one [`Kernel`]: parsed and validated once from the node's attributes, with
//! inference rules for tract's analysis, typed output facts, and an `eval` over plain slices.
//! [`MlOp`] adapts a kernel to tract's `Expansion` (for the inference model) and `TypedOp` (for
//! the optimised plan).

mod features;
mod forest;
mod label_encoder;
mod labels;
mod preprocess;
mod svm;
mod transform;
mod tree_ops;

#[cfg(test)]
mod sklearn_tests;
#[cfg(test)]
mod test_graph;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_tests;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use tract_onnx::model::OnnxOpRegister;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Adds the `ai.onnx.ml` operators tract lacks (and replaces its `TreeEnsembleClassifier`, which
/// refuses skl2onnx's binary gradient-boosting exports) to `reg`.
pub fn register(reg: &mut OnnxOpRegister) {
    preprocess::register(reg);
    features::register(reg);
    label_encoder::register(reg);
    svm::register(reg);
    tree_ops::register(reg);
}

/// One `ai.onnx.ml` operator with its attributes parsed and checked.
pub(crate) trait Kernel: fmt::Debug + Send + Sync + 'static {
    /// The ONNX `op_type`.
    fn op_type(&self) -> &'static str;
    /// Number of outputs.
    fn outputs(&self) -> usize {
        1
    }
    /// Inference rules: types and shapes of the outputs from the inputs.
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult;
    /// Output facts of the typed model.
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;
    /// Runs the operator.
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// A [`Kernel`] as a tract operator. Kernels can hold thousands of tree nodes, so they are shared
/// rather than cloned, and two ops are equal only when they share one kernel.
#[derive(Debug)]
pub(crate) struct MlOp<K>(Arc<K>);

impl<K> Clone for MlOp<K> {
    fn clone(&self) -> Self {
        MlOp(self.0.clone())
    }
}

impl<K> PartialEq for MlOp<K> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<K> Eq for MlOp<K> {}

impl<K: Kernel> Op for MlOp<K> {
    fn name(&self) -> StaticName {
        self.0.op_type().into()
    }

    op_as_typed_op!();
}

impl<K: Kernel> EvalOp for MlOp<K> {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }

    op_out_of_plan!();
}

impl<K: Kernel> TypedOp for MlOp<K> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }

    as_op!();
}

impl<K: Kernel> Expansion for MlOp<K> {
    fn name(&self) -> StaticName {
        self.0.op_type().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.0.rules(s, inputs, outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

/// What an op builder returns for a kernel.
pub(crate) type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// The inference op of a kernel.
pub(crate) fn built<K: Kernel>(kernel: K) -> Built {
    Ok((expand(MlOp(Arc::new(kernel))), vec![]))
}

/// `op_type` and name of a node, for error messages.
pub(crate) fn describe(node: &NodeProto) -> String {
    format!("{} `{}`", node.op_type, node.name)
}

/// A list attribute, empty when absent.
pub(crate) fn list<'a, T>(node: &'a NodeProto, name: &str) -> TractResult<Vec<T>>
where
    T: tract_onnx::pb_helpers::AttrTVecType<'a>,
{
    Ok(node.get_attr_opt_vec(name)?.unwrap_or_default())
}

/// Rows and columns of a model input, as onnxruntime reads it: `[C]` is one row, `[N, C]` is N rows.
pub(crate) fn rows_and_columns(op: &str, shape: &[usize]) -> TractResult<(usize, usize)> {
    match shape {
        [c] => Ok((1, *c)),
        [n, c] => Ok((*n, *c)),
        other => bail!("{op}: input must be [features] or [rows, features], got shape {other:?}"),
    }
}

/// The typed-model counterpart of [`rows_and_columns`]: the row count of an input fact.
pub(crate) fn row_dim(op: &str, fact: &TypedFact) -> TractResult<TDim> {
    match fact.rank() {
        1 => Ok(1.to_dim()),
        2 => Ok(fact.shape[0].clone()),
        r => bail!("{op}: input must be [features] or [rows, features], got rank {r}"),
    }
}

/// Inference rules of a one-input, one-output op that keeps the input's shape; the output has
/// the input's type unless `dtype` names one.
pub(crate) fn elementwise_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    dtype: Option<DatumType>,
) -> InferenceResult {
    check_input_arity(inputs, 1)?;
    check_output_arity(outputs, 1)?;
    match dtype {
        Some(dt) => s.equals(&outputs[0].datum_type, dt)?,
        None => s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?,
    }
    s.equals(&inputs[0].shape, &outputs[0].shape)
}

/// Inference rule: `output`'s first dimension is the number of rows of `input` (1 for a vector).
pub(crate) fn rows_rule<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    input: &'p TensorProxy,
    output: &'p TensorProxy,
) -> InferenceResult {
    s.given(&input.rank, move |s, rank| {
        if rank == 1 {
            s.equals(&output.shape[0], 1.to_dim())
        } else {
            s.equals(&output.shape[0], &input.shape[0])
        }
    })
}

/// The input as f32 (cast from f64 or integers), as onnxruntime's float kernels read it.
pub(crate) fn floats<'a>(op: &str, t: &'a TValue) -> TractResult<Cow<'a, Tensor>> {
    match t.datum_type() {
        DatumType::F32 | DatumType::F64 | DatumType::I64 | DatumType::I32 => t.cast_to::<f32>(),
        DatumType::TDim => Ok(Cow::Owned(t.cast_to::<i64>()?.cast_to::<f32>()?.into_owned())),
        other => bail!("{op}: input must be float, double, int64 or int32, got {other:?}"),
    }
}

/// The tensor with tract's symbolic integers (`TDim`) as int64. tract types every ONNX
/// `Cast(to=INT64)` as `TDim`, so int64 features arriving from a cast come in that form.
pub(crate) fn int64s(t: &Tensor) -> TractResult<Cow<'_, Tensor>> {
    if t.datum_type() == DatumType::TDim {
        t.cast_to::<i64>()
    } else {
        Ok(Cow::Borrowed(t))
    }
}

/// Casts `TDim` graph outputs to int64. tract types every ONNX `Cast(to=INT64)` as its symbolic
/// integer `TDim`, which no client can receive; skl2onnx computes the labels of IsolationForest
/// and OneClassSVM with such casts.
pub fn int64_outputs(mut model: TypedModel) -> TractResult<TypedModel> {
    for ix in 0..model.outputs.len() {
        let outlet = model.outputs[ix];
        if model.outlet_fact(outlet)?.datum_type != DatumType::TDim {
            continue;
        }
        let label = model.outlet_label(outlet).map(str::to_string);
        let name = format!("{}.as_int64", model.node(outlet.node).name);
        let cast = model.wire_node(name, tract_onnx::tract_core::ops::cast::cast(DatumType::I64), &[outlet])?[0];
        model.outputs[ix] = cast;
        if let Some(label) = label {
            model.set_outlet_label(cast, label)?;
        }
    }
    Ok(model)
}

/// The plain data of a tensor.
pub(crate) fn slice<T: Datum>(t: &Tensor) -> TractResult<&[T]> {
    t.try_as_plain_ram()?.as_slice::<T>()
}

/// A tensor of `shape` holding `data`.
pub(crate) fn tensor_of<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<TValue> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor().into_tvalue())
}
