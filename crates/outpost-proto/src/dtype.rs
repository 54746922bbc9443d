//! Tensor element types, named the way the Open Inference Protocol names them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Element type of a tensor, spelled as in the Open Inference Protocol (`FP32`, `INT64`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DType {
    /// Boolean, one byte per element on the wire.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision float.
    F16,
    /// IEEE single precision float.
    F32,
    /// IEEE double precision float.
    F64,
    /// Variable-length byte strings (ONNX `string`).
    Bytes,
}

impl DType {
    /// Every data type, in a stable order.
    pub const ALL: [DType; 13] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::Bytes,
    ];

    /// The Open Inference Protocol name (`FP32`).
    pub fn oip_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
        }
    }

    /// Size of one element in the binary tensor encoding; `None` for variable-size `BYTES`.
    pub fn size_of(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }

    /// Whether values of this type are floating point.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.oip_name())
    }
}

/// A data type name that is neither an OIP nor an ONNX name we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tensor datatype `{0}` (expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;

    /// Accepts OIP names (`FP32`) and the common ONNX/numpy spellings (`float32`, `int64`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.to_ascii_uppercase();
        Ok(match up.as_str() {
            "BOOL" => DType::Bool,
            "UINT8" | "U8" => DType::U8,
            "UINT16" | "U16" => DType::U16,
            "UINT32" | "U32" => DType::U32,
            "UINT64" | "U64" => DType::U64,
            "INT8" | "I8" => DType::I8,
            "INT16" | "I16" => DType::I16,
            "INT32" | "I32" => DType::I32,
            "INT64" | "I64" => DType::I64,
            "FP16" | "FLOAT16" | "F16" | "HALF" => DType::F16,
            "FP32" | "FLOAT32" | "FLOAT" | "F32" => DType::F32,
            "FP64" | "FLOAT64" | "DOUBLE" | "F64" => DType::F64,
            "BYTES" | "STRING" => DType::Bytes,
            _ => return Err(UnknownDType(s.to_string())),
        })
    }
}

impl TryFrom<String> for DType {
    type Error = UnknownDType;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DType> for String {
    fn from(d: DType) -> String {
        d.oip_name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips_through_its_oip_name() {
        for d in DType::ALL {
            assert_eq!(d.oip_name().parse::<DType>().unwrap(), d);
        }
    }

    #[test]
    fn onnx_spellings_are_accepted_and_garbage_is_named() {
        assert_eq!("float32".parse::<DType>().unwrap(), DType::F32);
        let err = "complex".parse::<DType>().unwrap_err();
        assert!(err.to_string().contains("complex"));
    }
}
