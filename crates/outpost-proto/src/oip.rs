//! Open Inference Protocol v2 (the KServe / Triton HTTP protocol) messages.
//!
//! The field names and optionality follow the published protocol exactly so that `tritonclient`
//! and KServe clients work unchanged. Tensor `data` stays a [`serde_json::Value`] here: its
//! interpretation (flat or nested row-major arrays, strings for `BYTES`) depends on the declared
//! datatype and shape, which the agent checks against the model.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Free-form `parameters` object carried by requests, responses, inputs and outputs.
pub type Parameters = Map<String, Value>;

/// Parameter naming the byte size of an input or output carried in the binary section.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Output parameter asking for this output in the binary section.
pub const BINARY_DATA: &str = "binary_data";
/// Request parameter asking for every output in the binary section.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// Header giving the byte length of the JSON part of a body that also carries binary tensors.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// `GET /v2` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// Server name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Protocol extensions the server supports.
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live` response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveResponse {
    /// Whether the server is live.
    pub live: bool,
}

/// `GET /v2/health/ready` response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyResponse {
    /// Whether the server is ready to serve.
    pub ready: bool,
}

/// `GET /v2/models/{m}/ready` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReadyResponse {
    /// Model name.
    pub name: String,
    /// Whether the model is ready.
    pub ready: bool,
}

/// Name, datatype and shape of one model input or output; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: String,
    /// OIP datatype name.
    pub datatype: String,
    /// Shape, `-1` for dimensions that vary per request.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Versions available for this model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// Framework of the model (`onnx_tract`, `onnxruntime_onnx`).
    pub platform: String,
    /// Model inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Model outputs.
    pub outputs: Vec<TensorMetadata>,
    /// outpost extension: load state and, when unavailable, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

/// One input tensor of an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInput {
    /// Input name as the model declares it.
    pub name: String,
    /// Shape of this tensor.
    pub shape: Vec<i64>,
    /// OIP datatype name.
    pub datatype: String,
    /// Optional parameters, e.g. `binary_data_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Tensor contents in row-major order; absent when carried in the binary section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One requested output of an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOutput {
    /// Output name.
    pub name: String,
    /// Optional parameters, e.g. `binary_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

/// `POST /v2/models/{m}/infer` request body (its JSON part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Request id echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Request parameters, e.g. `binary_data_output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Input tensors.
    pub inputs: Vec<RequestInput>,
    /// Outputs to return; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One output tensor of an inference response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseOutput {
    /// Output name.
    pub name: String,
    /// Shape of this tensor.
    pub shape: Vec<i64>,
    /// OIP datatype name.
    pub datatype: String,
    /// Parameters, e.g. `binary_data_size` when the data is in the binary section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Flat row-major contents; absent when carried in the binary section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// `POST /v2/models/{m}/infer` response body (its JSON part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// Model that answered.
    pub model_name: String,
    /// Version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Request id, when the request had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Response parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Output tensors.
    pub outputs: Vec<ResponseOutput>,
}

/// Error body of every failed request: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong, naming the model, tensor or limit involved.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tritonclient_style_binary_request_parses() {
        let body = r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32",
            "parameters":{"binary_data_size":12}}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let req: InferRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.inputs[0].data, None);
        let size = req.inputs[0].parameters.as_ref().unwrap()[BINARY_DATA_SIZE].as_u64();
        assert_eq!(size, Some(12));
    }

    #[test]
    fn absent_optional_fields_are_not_serialized() {
        let resp =
            InferResponse { model_name: "m".into(), model_version: None, id: None, parameters: None, outputs: vec![] };
        assert_eq!(serde_json::to_string(&resp).unwrap(), r#"{"model_name":"m","outputs":[]}"#);
    }
}
