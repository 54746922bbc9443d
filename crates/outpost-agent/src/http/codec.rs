//! Request and response bodies of `…/infer`: JSON tensors and the binary tensor data extension.
//!
//! With the extension, a body is a JSON header of `Inference-Header-Content-Length` bytes
//! followed by raw tensor blobs, one per input that carries `binary_data_size`, in the order the
//! inputs are listed. Outputs are returned the same way when the client asks for binary data
//! (per output `binary_data`, or `binary_data_output` for all), as `tritonclient` does by default.
//! Pure functions over bytes, so every framing rule is unit-tested without a server.

use super::ApiError;
use outpost_proto::oip::{
    InferRequest, InferResponse, Parameters, ResponseOutput, BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE,
};
use outpost_proto::DType;
use outpost_runtime::backend::IoSpec;
use outpost_runtime::tensor::{self, dtype_of};
use outpost_runtime::{RuntimeError, Tensor};
use serde_json::Value;

/// A parsed infer request: the JSON header and the binary tail after it.
#[derive(Debug)]
pub struct ParsedRequest<'a> {
    /// The JSON part.
    pub request: InferRequest,
    /// Binary tensor data following the JSON header; empty without the extension.
    pub binary: &'a [u8],
}

/// Splits a body at `header_len` (from `Inference-Header-Content-Length`) and parses the JSON.
pub fn parse_request(body: &[u8], header_len: Option<usize>) -> Result<ParsedRequest<'_>, ApiError> {
    let (json, binary) = match header_len {
        Some(n) => body.split_at_checked(n).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        })?,
        None => (body, &[][..]),
    };
    let request: InferRequest = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad_request(format!("invalid inference request JSON: {e}")))?;
    Ok(ParsedRequest { request, binary })
}

fn param<'a>(params: Option<&'a Parameters>, key: &str) -> Option<&'a Value> {
    params.and_then(|p| p.get(key))
}

fn param_bool(params: Option<&Parameters>, key: &str) -> bool {
    param(params, key).and_then(Value::as_bool).unwrap_or(false)
}

/// Builds input tensors in the model's graph order, checking every name, datatype, shape and
/// byte count against `specs` and naming the tensor at fault.
pub fn decode_inputs(parsed: &ParsedRequest<'_>, specs: &[IoSpec]) -> Result<Vec<Tensor>, ApiError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; specs.len()];
    let mut offset = 0usize;
    for input in &parsed.request.inputs {
        let bad = |reason: String| ApiError::from(RuntimeError::BadInput { tensor: input.name.clone(), reason });
        let Some(index) = specs.iter().position(|s| s.name == input.name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(bad(format!("the model has no such input (inputs: {})", names.join(", "))));
        };
        if slots[index].is_some() {
            return Err(bad("given more than once".into()));
        }
        let dtype: DType =
            input.datatype.parse().map_err(|e: outpost_proto::dtype::UnknownDType| bad(e.to_string()))?;
        let spec = &specs[index];
        if dtype != spec.dtype {
            return Err(bad(format!("expected datatype {}, got {}", spec.dtype, dtype)));
        }
        let shape = tensor::shape_to_usize(&input.name, &input.shape)?;
        if !spec.accepts(&shape) {
            return Err(bad(format!("expected shape {:?}, got {:?}", spec.oip_shape(), input.shape)));
        }
        let t = match param(input.parameters.as_ref(), BINARY_DATA_SIZE) {
            Some(size) => {
                let size =
                    size.as_u64().ok_or_else(|| bad(format!("{BINARY_DATA_SIZE} must be a byte count")))? as usize;
                let end = offset.checked_add(size).filter(|e| *e <= parsed.binary.len()).ok_or_else(|| {
                    bad(format!(
                        "{BINARY_DATA_SIZE} {size} at offset {offset} runs past the {} bytes of binary data",
                        parsed.binary.len()
                    ))
                })?;
                let t = tensor::tensor_from_bytes(&input.name, dtype, &shape, &parsed.binary[offset..end])?;
                offset = end;
                t
            }
            None => {
                let data =
                    input.data.as_ref().ok_or_else(|| bad(format!("has neither `data` nor {BINARY_DATA_SIZE}")))?;
                tensor::tensor_from_json(&input.name, dtype, &shape, data)?
            }
        };
        slots[index] = Some(t);
    }
    if offset != parsed.binary.len() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the header but inputs claim {offset}",
            parsed.binary.len()
        )));
    }
    slots
        .into_iter()
        .zip(specs)
        .map(|(t, spec)| {
            t.ok_or_else(|| {
                ApiError::from(RuntimeError::BadInput {
                    tensor: spec.name.clone(),
                    reason: "missing from the request".into(),
                })
            })
        })
        .collect()
}

/// An encoded response body and, when it carries binary data, the length of its JSON header.
#[derive(Debug)]
pub struct EncodedResponse {
    /// The body.
    pub body: Vec<u8>,
    /// Value for `Inference-Header-Content-Length`, when binary data follows the JSON.
    pub header_len: Option<usize>,
}

/// Encodes the outputs the request asked for (all when it names none), as JSON or binary.
pub fn encode_response(
    request: &InferRequest,
    model_name: &str,
    model_version: &str,
    specs: &[IoSpec],
    outputs: &[Tensor],
) -> Result<EncodedResponse, ApiError> {
    let all_binary = param_bool(request.parameters.as_ref(), BINARY_DATA_OUTPUT);
    let wanted: Vec<(usize, bool)> = match &request.outputs {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|o| {
                let i = specs.iter().position(|s| s.name == o.name).ok_or_else(|| {
                    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    ApiError::bad_request(format!(
                        "output `{}`: the model has no such output (outputs: {})",
                        o.name,
                        names.join(", ")
                    ))
                })?;
                let binary = match param(o.parameters.as_ref(), BINARY_DATA) {
                    Some(v) => v.as_bool().unwrap_or(false),
                    None => all_binary,
                };
                Ok((i, binary))
            })
            .collect::<Result<_, ApiError>>()?,
        _ => (0..specs.len()).map(|i| (i, all_binary)).collect(),
    };
    let mut blobs = Vec::new();
    let mut out = Vec::with_capacity(wanted.len());
    for (i, binary) in wanted {
        let (spec, t) = (&specs[i], &outputs[i]);
        let datatype = dtype_of(t.datum_type()).unwrap_or(spec.dtype).to_string();
        let shape = t.shape().iter().map(|d| *d as i64).collect();
        let (data, parameters) = if binary {
            let bytes = tensor::tensor_to_bytes(t)?;
            let mut p = Parameters::new();
            p.insert(BINARY_DATA_SIZE.into(), Value::from(bytes.len()));
            blobs.push(bytes);
            (None, Some(p))
        } else {
            (Some(tensor::tensor_to_json(t)?), None)
        };
        out.push(ResponseOutput { name: spec.name.clone(), shape, datatype, parameters, data });
    }
    let response = InferResponse {
        model_name: model_name.to_string(),
        model_version: Some(model_version.to_string()),
        id: request.id.clone(),
        parameters: None,
        outputs: out,
    };
    let mut body = serde_json::to_vec(&response).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if blobs.is_empty() {
        return Ok(EncodedResponse { body, header_len: None });
    }
    let header_len = body.len();
    blobs.iter().for_each(|b| body.extend_from_slice(b));
    Ok(EncodedResponse { body, header_len: Some(header_len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<IoSpec> {
        vec![
            IoSpec { name: "a".into(), dtype: DType::F32, shape: vec![None, Some(2)] },
            IoSpec { name: "b".into(), dtype: DType::I64, shape: vec![Some(1)] },
        ]
    }

    fn binary_body() -> (Vec<u8>, usize) {
        let header = br#"{"inputs":[{"name":"b","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}},
            {"name":"a","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&7i64.to_le_bytes());
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        (body, header.len())
    }

    #[test]
    fn binary_inputs_are_read_in_listed_order_and_returned_in_graph_order() {
        let (body, n) = binary_body();
        let parsed = parse_request(&body, Some(n)).unwrap();
        let t = decode_inputs(&parsed, &specs()).unwrap();
        assert_eq!(outpost_runtime::tensor::values::<f32>(&t[0]).unwrap(), &[1.5, -2.0]);
        assert_eq!(outpost_runtime::tensor::values::<i64>(&t[1]).unwrap(), &[7]);
    }

    #[test]
    fn bytes_tensor_with_huge_shape_is_refused_without_allocating() {
        // A model with a dynamic BYTES input; the request claims 2^32 strings and sends two. The
        // old decoder reserved 2^32 `String`s (96 GiB) first, which aborts the process.
        let specs = [IoSpec { name: "s".into(), dtype: DType::Bytes, shape: vec![None] }];
        let header = br#"{"inputs":[{"name":"s","shape":[4294967296],"datatype":"BYTES","parameters":{"binary_data_size":10}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, b'a', 1, 0, 0, 0, b'b']);
        let parsed = parse_request(&body, Some(header.len())).unwrap();
        let err = decode_inputs(&parsed, &specs).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(err.message.contains("input `s`") && err.message.contains("hold at most 2"), "{}", err.message);
    }

    #[test]
    fn json_inputs_accept_nested_arrays() {
        let body = br#"{"inputs":[{"name":"a","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]},
            {"name":"b","shape":[1],"datatype":"INT64","data":[5]}]}"#;
        let parsed = parse_request(body, None).unwrap();
        let t = decode_inputs(&parsed, &specs()).unwrap();
        assert_eq!(t[0].shape(), &[2, 2]);
    }

    #[test]
    fn framing_errors_name_the_tensor() {
        let (body, n) = binary_body();
        let parsed = parse_request(&body[..body.len() - 1], Some(n)).unwrap();
        let err = decode_inputs(&parsed, &specs()).unwrap_err();
        assert!(err.message.contains("`a`") && err.message.contains("runs past"), "{}", err.message);

        let err = parse_request(&body, Some(body.len() + 1)).unwrap_err();
        assert!(err.message.contains("Inference-Header-Content-Length"), "{}", err.message);

        let mut extra = body.clone();
        extra.push(0);
        let err = decode_inputs(&parse_request(&extra, Some(n)).unwrap(), &specs()).unwrap_err();
        assert!(err.message.contains("binary data"), "{}", err.message);
    }

    #[test]
    fn wrong_name_dtype_shape_or_count_is_400_naming_the_tensor() {
        let cases = [
            (r#"{"name":"zz","shape":[1],"datatype":"INT64","data":[1]}"#, "`zz`"),
            (r#"{"name":"b","shape":[1],"datatype":"FP32","data":[1]}"#, "expected datatype INT64"),
            (r#"{"name":"b","shape":[2],"datatype":"INT64","data":[1,2]}"#, "expected shape"),
            (r#"{"name":"b","shape":[1],"datatype":"INT64","data":[1,2]}"#, "needs 1 elements"),
            (r#"{"name":"b","shape":[-1],"datatype":"INT64","data":[1]}"#, "negative"),
        ];
        for (input, needle) in cases {
            let body =
                format!(r#"{{"inputs":[{input}, {{"name":"a","shape":[1,2],"datatype":"FP32","data":[1,2]}}]}}"#);
            let err = decode_inputs(&parse_request(body.as_bytes(), None).unwrap(), &specs()).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        let body = br#"{"inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
        let err = decode_inputs(&parse_request(body, None).unwrap(), &specs()).unwrap_err();
        assert!(err.message.contains("`b`") && err.message.contains("missing"), "{}", err.message);
    }

    #[test]
    fn garbage_json_is_a_clear_400() {
        let err = parse_request(b"{not json", None).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("invalid inference request JSON"));
    }

    #[test]
    fn outputs_are_binary_only_when_asked() {
        let out_specs = vec![
            IoSpec { name: "y".into(), dtype: DType::F32, shape: vec![Some(2)] },
            IoSpec { name: "z".into(), dtype: DType::I64, shape: vec![Some(1)] },
        ];
        let outputs =
            || vec![Tensor::from_shape(&[2], &[1f32, 2.0]).unwrap(), Tensor::from_shape(&[1], &[3i64]).unwrap()];
        let req: InferRequest = serde_json::from_str(
            r#"{"inputs":[],"outputs":[{"name":"z","parameters":{"binary_data":true}},{"name":"y"}]}"#,
        )
        .unwrap();
        let enc = encode_response(&req, "m", "1", &out_specs, &outputs()).unwrap();
        let n = enc.header_len.unwrap();
        let head: InferResponse = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(head.outputs[0].name, "z");
        assert_eq!(head.outputs[0].parameters.as_ref().unwrap()[BINARY_DATA_SIZE], 8);
        assert_eq!(head.outputs[1].data, Some(serde_json::json!([1.0, 2.0])));
        assert_eq!(&enc.body[n..], &3i64.to_le_bytes());

        let req: InferRequest = serde_json::from_str(r#"{"inputs":[]}"#).unwrap();
        let enc = encode_response(&req, "m", "1", &out_specs, &outputs()).unwrap();
        assert!(enc.header_len.is_none());

        let req: InferRequest = serde_json::from_str(r#"{"inputs":[],"outputs":[{"name":"nope"}]}"#).unwrap();
        assert!(encode_response(&req, "m", "1", &out_specs, &outputs()).unwrap_err().message.contains("`nope`"));
    }
}
