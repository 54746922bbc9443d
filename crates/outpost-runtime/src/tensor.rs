//! Typed tensors on the wire: conversions between the Open Inference Protocol encodings (JSON
//! arrays and the little-endian binary extension) and tract tensors, for every element type
//! both sides support.
//!
//! Every decoder checks the element count against the shape and names the tensor in its error,
//! because a wrong count is the most common client mistake and the least helpful to debug.

use crate::RuntimeError;
use outpost_proto::DType;
use serde_json::Value;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::f16;

/// The tract element type for an OIP data type.
pub fn datum_type(dtype: DType) -> DatumType {
    match dtype {
        DType::Bool => DatumType::Bool,
        DType::U8 => DatumType::U8,
        DType::U16 => DatumType::U16,
        DType::U32 => DatumType::U32,
        DType::U64 => DatumType::U64,
        DType::I8 => DatumType::I8,
        DType::I16 => DatumType::I16,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::Bytes => DatumType::String,
    }
}

/// The OIP data type of a tract element type, if the protocol has one.
pub fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt.unquantized() {
        DatumType::Bool => DType::Bool,
        DatumType::U8 => DType::U8,
        DatumType::U16 => DType::U16,
        DatumType::U32 => DType::U32,
        DatumType::U64 => DType::U64,
        DatumType::I8 => DType::I8,
        DatumType::I16 => DType::I16,
        DatumType::I32 => DType::I32,
        DatumType::I64 => DType::I64,
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::String => DType::Bytes,
        _ => return None,
    })
}

fn bad(tensor: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BadInput { tensor: tensor.to_string(), reason: reason.into() }
}

/// Converts a wire shape to sizes, refusing negative dimensions and absurd element counts.
pub fn shape_to_usize(name: &str, shape: &[i64]) -> Result<Vec<usize>, RuntimeError> {
    let mut count: usize = 1;
    let mut out = Vec::with_capacity(shape.len());
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| bad(name, format!("shape {shape:?} has a negative dimension")))?;
        count = count
            .checked_mul(d)
            .filter(|c| *c <= 1 << 32)
            .ok_or_else(|| bad(name, format!("shape {shape:?} has too many elements")))?;
        out.push(d);
    }
    Ok(out)
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

macro_rules! json_numbers {
    ($name:expr, $vals:expr, $shape:expr, $t:ty, $conv:expr) => {{
        let mut data: Vec<$t> = Vec::with_capacity($vals.len());
        for (i, v) in $vals.iter().enumerate() {
            let x = $conv(v).ok_or_else(|| bad($name, format!("element {i} is {v}, not a {}", stringify!($t))))?;
            data.push(x);
        }
        Tensor::from_shape::<$t>($shape, &data).map_err(|e| bad($name, e.to_string()))?
    }};
}

fn int<T: TryFrom<i64>>(v: &Value) -> Option<T> {
    v.as_i64().and_then(|x| T::try_from(x).ok())
}

fn uint<T: TryFrom<u64>>(v: &Value) -> Option<T> {
    v.as_u64().and_then(|x| T::try_from(x).ok())
}

/// Builds a tensor from OIP JSON `data` (flat or nested row-major arrays).
pub fn tensor_from_json(name: &str, dtype: DType, shape: &[usize], data: &Value) -> Result<Tensor, RuntimeError> {
    let mut vals = Vec::new();
    flatten(data, &mut vals);
    let expected: usize = shape.iter().product();
    if vals.len() != expected {
        return Err(bad(name, format!("shape {shape:?} needs {expected} elements, data has {}", vals.len())));
    }
    Ok(match dtype {
        DType::Bool => json_numbers!(name, vals, shape, bool, |v: &Value| v.as_bool()),
        DType::U8 => json_numbers!(name, vals, shape, u8, uint::<u8>),
        DType::U16 => json_numbers!(name, vals, shape, u16, uint::<u16>),
        DType::U32 => json_numbers!(name, vals, shape, u32, uint::<u32>),
        DType::U64 => json_numbers!(name, vals, shape, u64, uint::<u64>),
        DType::I8 => json_numbers!(name, vals, shape, i8, int::<i8>),
        DType::I16 => json_numbers!(name, vals, shape, i16, int::<i16>),
        DType::I32 => json_numbers!(name, vals, shape, i32, int::<i32>),
        DType::I64 => json_numbers!(name, vals, shape, i64, int::<i64>),
        DType::F16 => json_numbers!(name, vals, shape, f16, |v: &Value| v.as_f64().map(f16::from_f64)),
        DType::F32 => json_numbers!(name, vals, shape, f32, |v: &Value| v.as_f64().map(|x| x as f32)),
        DType::F64 => json_numbers!(name, vals, shape, f64, |v: &Value| v.as_f64()),
        DType::Bytes => {
            let mut items = Vec::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                items.push(
                    v.as_str().ok_or_else(|| bad(name, format!("element {i} is {v}, not a string")))?.to_string(),
                );
            }
            strings(name, shape, items)?
        }
    })
}

/// Builds a tensor from the OIP binary encoding: little-endian elements, or for `BYTES` a 4-byte
/// little-endian length before each element.
pub fn tensor_from_bytes(name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, RuntimeError> {
    let expected: usize = shape.iter().product();
    if dtype == DType::Bytes {
        // Each element takes at least its 4-byte length, so the data bounds the count; the shape
        // (from the request) must not size the allocation before it is checked against the data.
        if expected > bytes.len() / 4 {
            return Err(bad(
                name,
                format!(
                    "shape {shape:?} needs {expected} BYTES elements, the {} bytes of data hold at most {}",
                    bytes.len(),
                    bytes.len() / 4
                ),
            ));
        }
        let mut items = Vec::with_capacity(expected);
        let mut rest = bytes;
        while !rest.is_empty() {
            if items.len() == expected {
                return Err(bad(name, format!("shape {shape:?} needs {expected} elements, data has more")));
            }
            let (len, tail) =
                rest.split_first_chunk::<4>().ok_or_else(|| bad(name, "truncated BYTES element length"))?;
            let len = u32::from_le_bytes(*len) as usize;
            let (item, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| bad(name, format!("BYTES element of {len} bytes runs past the data")))?;
            items.push(String::from_utf8_lossy(item).into_owned());
            rest = tail;
        }
        if items.len() != expected {
            return Err(bad(name, format!("shape {shape:?} needs {expected} elements, data has {}", items.len())));
        }
        return strings(name, shape, items);
    }
    let size = dtype.size_of().unwrap_or(1);
    if bytes.len() != expected * size {
        return Err(bad(
            name,
            format!("shape {shape:?} of {dtype} needs {} bytes, binary data has {}", expected * size, bytes.len()),
        ));
    }
    let dt = datum_type(dtype);
    if dtype == DType::Bool {
        let vals: Vec<bool> = bytes.iter().map(|b| *b != 0).collect();
        return Tensor::from_shape(shape, &vals).map_err(|e| bad(name, e.to_string()));
    }
    // SAFETY-free path: tract copies raw little-endian bytes into an aligned tensor of `dt`.
    unsafe { Tensor::from_raw_dt(dt, shape, bytes) }.map_err(|e| bad(name, e.to_string()))
}

fn strings(name: &str, shape: &[usize], items: Vec<String>) -> Result<Tensor, RuntimeError> {
    tract_ndarray::ArrayD::from_shape_vec(shape, items).map(Tensor::from).map_err(|e| bad(name, e.to_string()))
}

/// Encodes a tensor in the OIP binary encoding.
pub fn tensor_to_bytes(t: &Tensor) -> Result<Vec<u8>, RuntimeError> {
    match t.datum_type() {
        DatumType::String => {
            let view = values::<String>(t).map_err(|e| internal(e.to_string()))?;
            let mut out = Vec::new();
            for s in view {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Ok(out)
        }
        DatumType::Bool => {
            Ok(values::<bool>(t).map_err(|e| internal(e.to_string()))?.iter().map(|b| *b as u8).collect())
        }
        dt if dtype_of(dt).is_some() => Ok(t.as_bytes().to_vec()),
        dt => Err(internal(format!("output type {dt:?} has no Open Inference Protocol encoding"))),
    }
}

/// The elements of a plain in-memory tensor.
pub fn values<T: Datum>(t: &Tensor) -> TractResult<&[T]> {
    t.try_as_plain_ram()?.as_slice::<T>()
}

/// A numeric element read as `f64`.
pub trait AsF64: Datum + Copy {
    /// The value as `f64` (64-bit integers round above 2^53).
    fn as_f64(self) -> f64;
}

macro_rules! as_f64 {
    ($($t:ty => $conv:expr),* $(,)?) => {$(
        impl AsF64 for $t {
            fn as_f64(self) -> f64 {
                ($conv)(self)
            }
        }
    )*};
}

as_f64! {
    f32 => f64::from, f64 => |v: f64| v, f16 => |v: f16| f64::from(v.to_f32()),
    u8 => f64::from, i8 => f64::from, u16 => f64::from, i16 => f64::from,
    u32 => f64::from, i32 => f64::from, u64 => |v: u64| v as f64, i64 => |v: i64| v as f64,
}

/// What a caller does with a numeric tensor's elements, whatever their type: one generic
/// method, so each element type gets its own monomorphised loop (no call per element).
pub trait NumericVisitor {
    /// What the visit returns.
    type Out;
    /// Visits the elements.
    fn visit<T: AsF64>(self, data: &[T]) -> Self::Out;
}

/// Runs `v` over the elements of a numeric tensor; `None` for other types (booleans and
/// strings carry no distribution a mean or a drift score means anything for).
pub fn visit_numeric<V: NumericVisitor>(t: &Tensor, v: V) -> Option<V::Out> {
    fn go<T: AsF64, V: NumericVisitor>(t: &Tensor, v: V) -> Option<V::Out> {
        values::<T>(t).ok().map(|d| v.visit(d))
    }
    match t.datum_type() {
        DatumType::F32 => go::<f32, V>(t, v),
        DatumType::F64 => go::<f64, V>(t, v),
        DatumType::F16 => go::<f16, V>(t, v),
        DatumType::U8 => go::<u8, V>(t, v),
        DatumType::I8 => go::<i8, V>(t, v),
        DatumType::U16 => go::<u16, V>(t, v),
        DatumType::I16 => go::<i16, V>(t, v),
        DatumType::U32 => go::<u32, V>(t, v),
        DatumType::I32 => go::<i32, V>(t, v),
        DatumType::U64 => go::<u64, V>(t, v),
        DatumType::I64 => go::<i64, V>(t, v),
        _ => None,
    }
}

fn internal(reason: String) -> RuntimeError {
    RuntimeError::Inference { model: String::new(), reason }
}

/// Encodes a tensor as a flat JSON array.
pub fn tensor_to_json(t: &Tensor) -> Result<Value, RuntimeError> {
    fn arr<T: Datum + Clone + serde::Serialize>(t: &Tensor) -> Result<Value, RuntimeError> {
        let s = values::<T>(t).map_err(|e| internal(e.to_string()))?;
        serde_json::to_value(s).map_err(|e| internal(e.to_string()))
    }
    match t.datum_type().unquantized() {
        DatumType::Bool => arr::<bool>(t),
        DatumType::U8 => arr::<u8>(t),
        DatumType::U16 => arr::<u16>(t),
        DatumType::U32 => arr::<u32>(t),
        DatumType::U64 => arr::<u64>(t),
        DatumType::I8 => arr::<i8>(t),
        DatumType::I16 => arr::<i16>(t),
        DatumType::I32 => arr::<i32>(t),
        DatumType::I64 => arr::<i64>(t),
        DatumType::F16 => {
            let s = values::<f16>(t).map_err(|e| internal(e.to_string()))?;
            Ok(Value::Array(s.iter().map(|x| json_f64(x.to_f64())).collect()))
        }
        DatumType::F32 => {
            let s = values::<f32>(t).map_err(|e| internal(e.to_string()))?;
            Ok(Value::Array(s.iter().map(|x| json_f64(*x as f64)).collect()))
        }
        DatumType::F64 => {
            let s = values::<f64>(t).map_err(|e| internal(e.to_string()))?;
            Ok(Value::Array(s.iter().map(|x| json_f64(*x)).collect()))
        }
        DatumType::String => arr::<String>(t),
        dt => Err(internal(format!("output type {dt:?} has no Open Inference Protocol encoding"))),
    }
}

/// JSON has no NaN or infinity; they are written as `null` rather than failing the response.
fn json_f64(x: f64) -> Value {
    serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
}

/// Casts a tensor to `dtype`, refusing lossy conversions between unrelated kinds (text and numbers).
pub fn cast(name: &str, t: Tensor, dtype: DType) -> Result<Tensor, RuntimeError> {
    let dt = datum_type(dtype);
    if t.datum_type() == dt {
        return Ok(t);
    }
    if (t.datum_type() == DatumType::String) != (dt == DatumType::String) {
        return Err(bad(name, format!("cannot convert {:?} to {dtype}", t.datum_type())));
    }
    t.cast_to_dt(dt).map(|c| c.into_owned()).map_err(|e| bad(name, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_json_give_the_same_tensor() {
        let a = tensor_from_json("x", DType::F32, &[2, 2], &json!([[1, 2], [3, 4.5]])).unwrap();
        let b = tensor_from_json("x", DType::F32, &[2, 2], &json!([1, 2, 3, 4.5])).unwrap();
        assert_eq!(a, b);
        assert_eq!(values::<f32>(&a).unwrap(), &[1.0, 2.0, 3.0, 4.5]);
    }

    #[test]
    fn wrong_element_count_names_the_tensor_and_the_counts() {
        let err = tensor_from_json("pixels", DType::U8, &[2, 3], &json!([1, 2, 3])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pixels") && msg.contains('6') && msg.contains('3'), "{msg}");
        let err = tensor_from_json("pixels", DType::U8, &[1], &json!([300])).unwrap_err();
        assert!(err.to_string().contains("not a u8"));
    }

    #[test]
    fn binary_round_trip_for_every_numeric_type() {
        for dtype in DType::ALL {
            let data = match dtype {
                DType::Bool => json!([true, false, true, true]),
                DType::Bytes => json!(["a", "", "ccc", "dd"]),
                DType::I8 | DType::I16 | DType::I32 | DType::I64 => json!([-1, 0, 1, 2]),
                _ => json!([0, 1, 2, 3]),
            };
            let t = tensor_from_json("x", dtype, &[2, 2], &data).unwrap();
            let bytes = tensor_to_bytes(&t).unwrap();
            let back = tensor_from_bytes("x", dtype, &[2, 2], &bytes).unwrap();
            assert_eq!(back, t, "{dtype}");
            assert_eq!(tensor_to_json(&back).unwrap(), tensor_to_json(&t).unwrap());
        }
    }

    #[test]
    fn truncated_binary_data_is_refused() {
        let err = tensor_from_bytes("x", DType::F32, &[4], &[0u8; 15]).unwrap_err();
        assert!(err.to_string().contains("16 bytes"));
        let err = tensor_from_bytes("s", DType::Bytes, &[1], &[9, 0, 0, 0, b'a']).unwrap_err();
        assert!(err.to_string().contains("runs past"));
    }

    #[test]
    fn bytes_elements_are_counted_against_the_data_before_reserving() {
        // 2^32 elements is within the shape limit; reserving a String for each would take 96 GiB.
        let shape = shape_to_usize("s", &[1 << 32]).unwrap();
        let data = [1, 0, 0, 0, b'a', 1, 0, 0, 0, b'b'];
        let err = tensor_from_bytes("s", DType::Bytes, &shape, &data).unwrap_err().to_string();
        assert!(err.contains("hold at most 2"), "{err}");
        let err = tensor_from_bytes("s", DType::Bytes, &[1], &data).unwrap_err().to_string();
        assert!(err.contains("needs 1 elements, data has more"), "{err}");
    }

    #[test]
    fn negative_or_huge_shapes_are_refused() {
        assert!(shape_to_usize("x", &[-1, 3]).is_err());
        assert!(shape_to_usize("x", &[1 << 20, 1 << 20]).is_err());
        assert_eq!(shape_to_usize("x", &[2, 3]).unwrap(), vec![2, 3]);
    }
}
