//! Conversions between tract tensors (what the rest of the runtime speaks) and ONNX Runtime
//! values, and from ONNX Runtime's graph metadata to [`IoSpec`]s.
//!
//! Inputs are borrowed, not copied, wherever `ort` has a matching Rust element type: ONNX Runtime
//! reads tract's buffer directly for the duration of the run. Two kinds cannot be borrowed:
//! strings (ONNX Runtime keeps its own `std::string`s) and `f16` (`ort` only knows `half::f16`
//! behind a feature we do not enable), so those are copied. Outputs are always copied into tract
//! tensors, since ONNX Runtime owns their memory and frees it with the run's outputs.

use super::IoSpec;
use crate::tensor::values;
use crate::{RuntimeError, Tensor};
use ort::memory::Allocator;
use ort::session::SessionInputValue;
use ort::value::{DynTensor, DynTensorValueType, Outlet, TensorElementType, TensorRef, Value, ValueType};
use outpost_proto::DType;
use std::collections::BTreeMap;
use tract_onnx::prelude::DatumType;
use tract_onnx::tract_core::internal::f16;

/// The protocol type of an ONNX Runtime element type, if the protocol has one.
pub(super) fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Bool => DType::Bool,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Uint16 => DType::U16,
        TensorElementType::Uint32 => DType::U32,
        TensorElementType::Uint64 => DType::U64,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Int16 => DType::I16,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::String => DType::Bytes,
        _ => return None,
    })
}

/// The spec of a graph input or output, with the manifest's symbols substituted.
pub(super) fn io_spec(outlet: &Outlet, symbols: &BTreeMap<String, i64>) -> Result<IoSpec, String> {
    let name = outlet.name();
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, dimension_symbols } => {
            let dtype = dtype_of(*ty)
                .ok_or_else(|| format!("tensor `{name}` has element type {ty}, which the protocol cannot carry"))?;
            let shape = shape
                .iter()
                .enumerate()
                .map(|(i, d)| pinned_dim(*d, dimension_symbols.get(i).map(String::as_str), symbols))
                .collect();
            Ok(IoSpec { name: name.to_string(), dtype, shape })
        }
        other => Err(format!("`{name}` is a {other}, not a tensor; the protocol carries tensors only")),
    }
}

/// A concrete dimension stays; a symbolic one takes the manifest's value, if it pins one.
///
/// ONNX Runtime reports a symbolic dimension as `-1` plus its name (empty when the exporter left
/// it anonymous), so only named dimensions can be pinned.
pub(super) fn pinned_dim(dim: i64, symbol: Option<&str>, symbols: &BTreeMap<String, i64>) -> Option<usize> {
    if dim >= 0 {
        return usize::try_from(dim).ok();
    }
    symbol.filter(|s| !s.is_empty()).and_then(|s| symbols.get(s)).and_then(|v| usize::try_from(*v).ok())
}

/// An ONNX Runtime input for a tract tensor: borrowed where possible, copied for strings and f16.
pub(super) fn to_ort<'t>(model: &str, name: &str, t: &'t Tensor) -> Result<SessionInputValue<'t>, RuntimeError> {
    let bad = |reason: String| RuntimeError::BadInput { tensor: name.to_string(), reason };
    let failed =
        |e: ort::Error| RuntimeError::Inference { model: model.to_string(), reason: format!("input `{name}`: {e}") };
    let shape: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
    macro_rules! borrow {
        ($t:ty) => {{
            let data = values::<$t>(t).map_err(|e| bad(e.to_string()))?;
            TensorRef::from_array_view((shape, data)).map(SessionInputValue::from).map_err(failed)
        }};
    }
    match t.datum_type() {
        DatumType::Bool => borrow!(bool),
        DatumType::U8 => borrow!(u8),
        DatumType::U16 => borrow!(u16),
        DatumType::U32 => borrow!(u32),
        DatumType::U64 => borrow!(u64),
        DatumType::I8 => borrow!(i8),
        DatumType::I16 => borrow!(i16),
        DatumType::I32 => borrow!(i32),
        DatumType::I64 => borrow!(i64),
        DatumType::F32 => borrow!(f32),
        DatumType::F64 => borrow!(f64),
        DatumType::F16 => {
            let data = values::<f16>(t).map_err(|e| bad(e.to_string()))?;
            let mut value = DynTensor::new(&Allocator::default(), TensorElementType::Float16, shape).map_err(failed)?;
            let dst = value.data_ptr_mut().cast::<u8>();
            let len = std::mem::size_of_val(data);
            if len > 0 && !dst.is_null() {
                // SAFETY: ONNX Runtime just allocated `dst` in CPU memory for exactly `data.len()` f16
                // elements, i.e. `len` bytes, and nothing else refers to it; `data` is a separate buffer.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), dst, len) };
            }
            Ok(SessionInputValue::from(value))
        }
        DatumType::String => {
            let data = values::<String>(t).map_err(|e| bad(e.to_string()))?;
            // ONNX Runtime stores C strings; a NUL byte would silently truncate the element.
            if let Some(i) = data.iter().position(|s| s.contains('\0')) {
                return Err(bad(format!("element {i} contains a NUL byte, which ONNX Runtime strings cannot hold")));
            }
            ort::value::Tensor::from_string_array((shape, data)).map(SessionInputValue::from).map_err(failed)
        }
        other => Err(bad(format!("element type {other:?} has no ONNX Runtime equivalent"))),
    }
}

/// Copies an ONNX Runtime output into a tract tensor.
pub(super) fn from_ort(value: &Value) -> Result<Tensor, String> {
    let (ty, shape) = match value.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape),
        other => return Err(format!("ONNX Runtime returned a {other}, which the protocol cannot carry")),
    };
    let dims = shape
        .iter()
        .map(|d| usize::try_from(*d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| format!("ONNX Runtime returned the shape {shape:?}"))?;
    macro_rules! copy {
        ($t:ty) => {{
            let (_, data) = value.try_extract_tensor::<$t>().map_err(|e| e.to_string())?;
            Tensor::from_shape::<$t>(&dims, data).map_err(|e| e.to_string())
        }};
    }
    match ty {
        TensorElementType::Bool => copy!(bool),
        TensorElementType::Uint8 => copy!(u8),
        TensorElementType::Uint16 => copy!(u16),
        TensorElementType::Uint32 => copy!(u32),
        TensorElementType::Uint64 => copy!(u64),
        TensorElementType::Int8 => copy!(i8),
        TensorElementType::Int16 => copy!(i16),
        TensorElementType::Int32 => copy!(i32),
        TensorElementType::Int64 => copy!(i64),
        TensorElementType::Float32 => copy!(f32),
        TensorElementType::Float64 => copy!(f64),
        TensorElementType::Float16 => {
            let tensor = value.view().downcast::<DynTensorValueType>().map_err(|e| e.to_string())?;
            let len = dims.iter().product::<usize>() * std::mem::size_of::<f16>();
            let src = tensor.data_ptr().cast::<u8>();
            let bytes: &[u8] = if len == 0 || src.is_null() {
                &[]
            } else {
                // SAFETY: the CPU execution provider returned this f16 tensor in CPU memory holding
                // `dims.product()` elements of 2 bytes; `tensor` keeps it alive while we copy.
                unsafe { std::slice::from_raw_parts(src, len) }
            };
            // SAFETY: `bytes` holds exactly `dims.product()` little-endian f16 values, and every bit
            // pattern is a valid f16.
            unsafe { Tensor::from_raw_dt(DatumType::F16, &dims, bytes) }.map_err(|e| e.to_string())
        }
        TensorElementType::String => {
            let (_, items) = value.try_extract_strings().map_err(|e| e.to_string())?;
            tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(dims, items)
                .map(Tensor::from)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("ONNX Runtime returned element type {other}, which the protocol cannot carry")),
    }
}

/// Small ONNX models for the backend's tests, and a check that the library is there.
#[cfg(test)]
pub(super) mod test_onnx {
    use super::super::onnxruntime::OrtEngine;
    use super::super::EngineOptions;
    use crate::RuntimeError;
    use outpost_proto::DType;

    /// Just enough protobuf to write small ONNX models: this crate has no `prost` dependency and
    /// tract-onnx does not re-export it.
    pub mod pb {
        /// A dimension of a graph input or output.
        pub enum Dim {
            Fixed(i64),
            Sym(&'static str),
        }

        fn varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }

        fn int(out: &mut Vec<u8>, field: u64, v: i64) {
            varint(out, field << 3);
            varint(out, v as u64);
        }

        fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
            varint(out, (field << 3) | 2);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }

        /// `ValueInfoProto` of a tensor with ONNX element type `elem`.
        pub fn value_info(name: &str, elem: i64, dims: &[Dim]) -> Vec<u8> {
            let mut shape = Vec::new();
            for d in dims {
                let mut dim = Vec::new();
                match d {
                    Dim::Fixed(v) => int(&mut dim, 1, *v),
                    Dim::Sym(s) => bytes(&mut dim, 2, s.as_bytes()),
                }
                bytes(&mut shape, 1, &dim);
            }
            let (mut tensor, mut ty, mut info) = (Vec::new(), Vec::new(), Vec::new());
            int(&mut tensor, 1, elem);
            bytes(&mut tensor, 2, &shape);
            bytes(&mut ty, 1, &tensor);
            bytes(&mut info, 1, name.as_bytes());
            bytes(&mut info, 2, &ty);
            info
        }

        /// `NodeProto`.
        pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
            let mut n = Vec::new();
            inputs.iter().for_each(|i| bytes(&mut n, 1, i.as_bytes()));
            outputs.iter().for_each(|o| bytes(&mut n, 2, o.as_bytes()));
            bytes(&mut n, 3, format!("{op}_{}", outputs.join("_")).as_bytes());
            bytes(&mut n, 4, op.as_bytes());
            n
        }

        /// FLOAT `TensorProto` with raw little-endian data.
        pub fn initializer(name: &str, dims: &[i64], data: &[f32]) -> Vec<u8> {
            let mut t = Vec::new();
            dims.iter().for_each(|d| int(&mut t, 1, *d));
            int(&mut t, 2, 1);
            bytes(&mut t, 8, name.as_bytes());
            bytes(&mut t, 9, &data.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
            t
        }

        /// `ModelProto` at IR 8, opset 17.
        pub fn model(nodes: &[Vec<u8>], inits: &[Vec<u8>], inputs: &[Vec<u8>], outputs: &[Vec<u8>]) -> Vec<u8> {
            let mut g = Vec::new();
            nodes.iter().for_each(|n| bytes(&mut g, 1, n));
            bytes(&mut g, 2, b"test");
            inits.iter().for_each(|i| bytes(&mut g, 5, i));
            inputs.iter().for_each(|i| bytes(&mut g, 11, i));
            outputs.iter().for_each(|o| bytes(&mut g, 12, o));
            let (mut opset, mut m) = (Vec::new(), Vec::new());
            int(&mut opset, 2, 17);
            int(&mut m, 1, 8);
            bytes(&mut m, 8, &opset);
            bytes(&mut m, 7, &g);
            m
        }
    }

    use pb::Dim::{Fixed, Sym};

    /// `Y = X·W + B` and `R = relu(Y)`, with `X: [batch, 3]`.
    pub fn linear_model() -> Vec<u8> {
        pb::model(
            &[
                pb::node("MatMul", &["X", "W"], &["XW"]),
                pb::node("Add", &["XW", "B"], &["Y"]),
                pb::node("Relu", &["Y"], &["R"]),
            ],
            &[
                pb::initializer("W", &[3, 2], &[0.5, -1.0, 2.0, 0.25, -0.75, 1.5]),
                pb::initializer("B", &[2], &[0.1, -0.2]),
            ],
            &[pb::value_info("X", 1, &[Sym("batch"), Fixed(3)])],
            &[pb::value_info("Y", 1, &[Sym("batch"), Fixed(2)]), pb::value_info("R", 1, &[Sym("batch"), Fixed(2)])],
        )
    }

    /// One `Identity` per element type: `in_<i>` to `out_<i>`, each of shape `[n]`.
    pub fn identity_model(elems: &[i64]) -> Vec<u8> {
        let names: Vec<(String, String)> = (0..elems.len()).map(|i| (format!("in_{i}"), format!("out_{i}"))).collect();
        let nodes: Vec<Vec<u8>> = names.iter().map(|(i, o)| pb::node("Identity", &[i], &[o])).collect();
        let io = |pick: fn(&(String, String)) -> &String| -> Vec<Vec<u8>> {
            names.iter().zip(elems).map(|(n, e)| pb::value_info(pick(n), *e, &[Sym("n")])).collect()
        };
        pb::model(&nodes, &[], &io(|n| &n.0), &io(|n| &n.1))
    }

    /// ONNX `TensorProto.DataType` code of a protocol type.
    pub fn onnx_elem(dtype: DType) -> i64 {
        match dtype {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bytes => 8,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
        }
    }

    /// Whether the library loads; without it the test is skipped, unless `CI=true`.
    pub fn ort_available() -> bool {
        let opts = EngineOptions { model_name: "probe".into(), ..Default::default() };
        match OrtEngine::load(&linear_model(), &opts) {
            Ok(_) => true,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI needs ONNX Runtime: {e}"),
            Err(e @ RuntimeError::BackendUnavailable { .. }) => {
                eprintln!("note: skipping an ONNX Runtime test: {e}");
                false
            }
            Err(e) => panic!("the probe model must load: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::onnxruntime::OrtEngine;
    use super::super::{Engine, EngineOptions};
    use super::test_onnx::{identity_model, onnx_elem, ort_available};
    use super::*;
    use crate::tensor::tensor_from_json;
    use serde_json::json;

    fn opts(name: &str) -> EngineOptions {
        EngineOptions { model_name: name.into(), ..Default::default() }
    }

    #[test]
    fn every_protocol_type_has_an_onnxruntime_element_type() {
        let all = [
            TensorElementType::Bool,
            TensorElementType::Uint8,
            TensorElementType::Uint16,
            TensorElementType::Uint32,
            TensorElementType::Uint64,
            TensorElementType::Int8,
            TensorElementType::Int16,
            TensorElementType::Int32,
            TensorElementType::Int64,
            TensorElementType::Float16,
            TensorElementType::Float32,
            TensorElementType::Float64,
            TensorElementType::String,
        ];
        let mapped: Vec<DType> = all.iter().filter_map(|t| dtype_of(*t)).collect();
        for dtype in DType::ALL {
            assert!(mapped.contains(&dtype), "{dtype} has no ONNX Runtime element type");
        }
        assert_eq!(dtype_of(TensorElementType::Bfloat16), None);
        assert_eq!(dtype_of(TensorElementType::Complex64), None);
    }

    #[test]
    fn symbolic_dims_take_manifest_values_and_unknown_symbols_stay_variable() {
        let symbols = BTreeMap::from([("batch".to_string(), 4), ("bad".to_string(), -2)]);
        assert_eq!(pinned_dim(3, Some(""), &symbols), Some(3));
        assert_eq!(pinned_dim(-1, Some("batch"), &symbols), Some(4));
        assert_eq!(pinned_dim(-1, Some("time"), &symbols), None);
        assert_eq!(pinned_dim(-1, Some(""), &symbols), None);
        assert_eq!(pinned_dim(-1, None, &symbols), None);
        assert_eq!(pinned_dim(-1, Some("bad"), &symbols), None, "a negative pin is ignored, not wrapped");
    }

    #[test]
    fn every_protocol_type_round_trips_through_onnxruntime() {
        if !ort_available() {
            return;
        }
        let engine = OrtEngine::load(&identity_model(&DType::ALL.map(onnx_elem)), &opts("identity")).unwrap();
        assert_eq!(engine.inputs().iter().map(|s| s.dtype).collect::<Vec<_>>(), DType::ALL);
        let inputs: Vec<Tensor> = DType::ALL
            .iter()
            .map(|dtype| {
                let data = match dtype {
                    DType::Bool => json!([true, false, true]),
                    DType::Bytes => json!(["a", "", "ünïcode"]),
                    DType::I8 | DType::I16 | DType::I32 | DType::I64 => json!([-1, 0, 2]),
                    DType::F16 | DType::F32 | DType::F64 => json!([-1.5, 0, 2.25]),
                    _ => json!([0, 1, 2]),
                };
                tensor_from_json("x", *dtype, &[3], &data).unwrap()
            })
            .collect();
        let outputs = engine.session().unwrap().run(inputs.clone()).unwrap();
        assert_eq!(outputs, inputs);
    }

    #[test]
    fn strings_with_nul_bytes_are_refused_as_bad_input() {
        if !ort_available() {
            return;
        }
        let engine = OrtEngine::load(&identity_model(&[8]), &opts("strings")).unwrap();
        let t = tensor_from_json("x", DType::Bytes, &[1], &json!(["a\u{0}b"])).unwrap();
        let err = engine.session().unwrap().run(vec![t]).unwrap_err();
        assert!(matches!(&err, RuntimeError::BadInput { tensor, .. } if tensor == "in_0"), "{err}");
    }

    #[test]
    fn an_element_type_the_protocol_lacks_is_a_model_error_naming_the_tensor() {
        if !ort_available() {
            return;
        }
        // 16 is BFLOAT16: ONNX Runtime runs it, the protocol cannot carry it.
        let err = OrtEngine::load(&identity_model(&[1, 16]), &opts("bf16")).unwrap_err();
        assert!(matches!(&err, RuntimeError::Model { reason, .. } if reason.contains("in_1")), "{err}");
        let err = OrtEngine::load(b"not a model", &opts("garbage")).unwrap_err();
        assert!(matches!(&err, RuntimeError::Model { model, .. } if model == "garbage"), "{err}");
    }
}
