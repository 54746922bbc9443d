//! The OpenAPI document served at `/openapi.json`, generated from the route annotations so it
//! cannot drift from the handlers.

use crate::routes::registry::{API_TOKEN_NAME_MAX, MAX_EXPIRES_IN_S};
use crate::routes::{self, channel, deltas, devices, drift, packages, registry, results, rollouts, tuf, MAX_LIMIT};
use outpost_proto::fleet::selector::{MAX_SELECTOR_BYTES, SELECTOR_PATTERN};
use outpost_proto::fleet::signing::{HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The control plane's API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "outpost control plane", description = "Operator REST API (bearer tokens with roles) and the signed device channel."),
    paths(
        routes::healthz, routes::readyz, routes::metrics, routes::openapi,
        devices::list_devices, devices::get_device, devices::change_labels, devices::revoke_device,
        devices::get_override, devices::put_override, devices::delete_override, devices::preview_desired,
        devices::history, devices::create_command, devices::list_commands, devices::fleet_summary,
        registry::create_enrollment_token, registry::list_enrollment_tokens, registry::revoke_enrollment_token,
        registry::create_api_token, registry::list_api_tokens, registry::revoke_api_token,
        registry::publish_model, registry::list_models, registry::model_versions,
        registry::create_assignment, registry::list_assignments, registry::delete_assignment,
        registry::list_audit,
        rollouts::create_rollout, rollouts::list_rollouts, rollouts::get_rollout, rollouts::rollout_devices,
        rollouts::rollout_action,
        packages::publish_package, packages::download_package, packages::device_package,
        deltas::device_delta_plan, deltas::device_delta_blobs, deltas::package_index,
        tuf::metadata, tuf::target, tuf::current_targets, tuf::put_targets, tuf::current_role, tuf::put_release,
        channel::enroll, channel::heartbeat, channel::reports, channel::desired_state, channel::ack_command,
        results::device_results, results::list_results,
        drift::list_drift, drift::list_alerts,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "devices", description = "Inventory, labels, overrides, commands"),
        (name = "tokens", description = "Enrollment and API tokens"),
        (name = "models", description = "Model registry"),
        (name = "assignments", description = "Which model versions run where"),
        (name = "rollouts", description = "Waves over label-selected devices, gated on health"),
        (name = "audit", description = "Who changed what"),
        (name = "results", description = "Results, events and alerts devices exported"),
        (name = "drift", description = "Drift of the data models see, and the alerts it raises"),
        (name = "device", description = "The signed device channel"),
        (name = "tuf", description = "The TUF repository of the packages"),
        (name = "health", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// Fields the wire types annotate as plain objects but that carry any JSON value (a model's
/// metadata or a command's result may be `null`), and the count maps that the derive renders
/// with string values because `Counts` and `Labels` are both `BTreeMap` aliases.
const ANY_JSON: &[(&str, &str)] = &[
    ("Command", "result"),
    ("CommandAck", "result"),
    ("ModelVersion", "metadata"),
    ("PublishModel", "metadata"),
    ("AuditEntry", "details"),
];
const COUNT_MAPS: &[(&str, &str)] = &[
    ("FleetSummary", "by_status"),
    ("FleetSummary", "by_health"),
    ("FleetSummary", "by_agent_version"),
    ("FleetSummary", "by_model_version"),
    ("Rollout", "skipped"),
    ("WaveStatus", "by_state"),
    ("WaveStatus", "failures"),
];

/// The OpenAPI document as served: the generated one with the schema corrections above.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = &mut doc["components"]["schemas"];
    for (schema, field) in ANY_JSON {
        if let Some(prop) = schemas[*schema]["properties"].get_mut(*field) {
            let description = prop.get("description").cloned();
            *prop = serde_json::json!({});
            if let Some(d) = description {
                prop["description"] = d;
            }
        }
    }
    for (schema, field) in COUNT_MAPS {
        if let Some(prop) = schemas[*schema]["properties"].get_mut(*field) {
            let description = prop.get("description").cloned().unwrap_or_default();
            *prop = serde_json::json!({
                "type": "object",
                "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0},
                "description": description,
            });
        }
    }
    if let Some(prop) = schemas["FleetSummary"]["properties"].get_mut("updates_by_model_version") {
        let description = prop.get("description").cloned().unwrap_or_default();
        *prop = serde_json::json!({
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0},
            },
            "description": description,
        });
    }
    add_limits(&mut doc);
    doc
}

/// Puts the limits the server enforces into the document, so that a request the schema allows
/// is a request the server accepts (checked by schemathesis' `positive_data_acceptance`).
fn add_limits(doc: &mut serde_json::Value) {
    use outpost_proto::fleet::api::OVERRIDE_MAX_MODELS;
    use serde_json::json;
    let schemas = &mut doc["components"]["schemas"];
    // Every `BTreeMap` the derive emits is a label map (counts are patched above).
    let labels = json!({
        "type": "object",
        "description": "Labels: keys are 1-253 and values 0-63 characters of A-Z a-z 0-9 . _ / -",
        "propertyNames": {"type": "string", "pattern": LABEL_KEY_PATTERN},
        "additionalProperties": {"type": "string", "pattern": LABEL_VALUE_PATTERN},
    });
    if let Some(map) = schemas.as_object_mut() {
        map.remove("BTreeMap");
        map.insert("Labels".into(), labels);
    }
    let fields: &[(&str, &str, serde_json::Value)] = &[
        ("CreateEnrollmentToken", "uses", json!({"minimum": 1})),
        ("CreateEnrollmentToken", "expires_in_s", json!({"minimum": 1, "maximum": MAX_EXPIRES_IN_S})),
        ("CreateApiToken", "expires_in_s", json!({"minimum": 1, "maximum": MAX_EXPIRES_IN_S})),
        (
            "CreateApiToken",
            "name",
            json!({"minLength": 1, "maxLength": API_TOKEN_NAME_MAX, "pattern": "[^ \\t\\n\\r\\x0b\\x0c]"}),
        ),
        ("LabelChange", "remove", json!({"items": {"type": "string", "pattern": LABEL_KEY_PATTERN}})),
        ("DeviceOverride", "models", json!({"maxProperties": OVERRIDE_MAX_MODELS})),
        (
            "CreateRollout",
            "waves",
            json!({"maxItems": 20, "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}}),
        ),
        ("CreateRollout", "gates", json!({"maxItems": 16, "items": {"type": "string", "pattern": GATE_PATTERN}})),
        ("CreateRollout", "bake_s", json!({"maximum": 30 * 86_400})),
        ("CreateRollout", "wave_deadline_s", json!({"minimum": 1, "maximum": 90 * 86_400})),
        ("CreateRollout", "max_failures", json!({"minimum": 0, "maximum": 100})),
        ("CreateRollout", "success", json!({"exclusiveMinimum": 0, "maximum": 100})),
        ("CreateRollout", "shadow_sample", json!({"minimum": 0, "maximum": 100})),
    ];
    for (schema, field, patch) in fields {
        if let (Some(prop), Some(patch)) = (schemas[*schema]["properties"].get_mut(*field), patch.as_object()) {
            for (k, v) in patch {
                prop[k] = v.clone();
            }
        }
    }
    let selector = json!({"type": "string", "pattern": SELECTOR_PATTERN, "maxLength": MAX_SELECTOR_BYTES});
    for schema in ["CreateAssignment", "CreateRollout"] {
        if let Some(prop) = schemas[schema]["properties"].get_mut("selector") {
            prop["pattern"] = json!(SELECTOR_PATTERN);
            prop["maxLength"] = json!(MAX_SELECTOR_BYTES);
        }
    }
    let int_cursor = json!({"type": "string", "pattern": "^(?:-?[0-9]{1,18})?$"});
    let model_cursor = json!({"type": "string", "pattern": "^(?:[^@\\u0000]*@[^\\u0000]*)?$"});
    let model_name = json!({"type": "string", "pattern": outpost_proto::names::MODEL_NAME_PATTERN});
    let version = json!({"type": "string", "pattern": outpost_proto::names::VERSION_PATTERN});
    // (parameter, path it applies to or "" for all, schema)
    let params: &[(&str, &str, serde_json::Value)] = &[
        ("limit", "", json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_LIMIT})),
        ("status", "", json!({"type": "string", "enum": ["online", "stale", "offline", "revoked"]})),
        ("selector", "", selector),
        ("cursor", "/v1/audit", int_cursor.clone()),
        ("cursor", "/v1/results", int_cursor.clone()),
        ("kind", "/v1/results", json!({"type": "string", "enum": ["result", "event", "alert", "telemetry"]})),
        ("group_by", "/v1/drift", json!({"type": "string", "pattern": LABEL_KEY_PATTERN})),
        ("cursor", "/v1/devices/{id}/commands", int_cursor),
        ("cursor", "/v1/models", model_cursor),
        ("name", "/v1/models/{name}/{version}/package", model_name.clone()),
        ("version", "/v1/models/{name}/{version}/package", version.clone()),
        ("name", "/v1/device/packages/{name}/{version}", model_name.clone()),
        ("version", "/v1/device/packages/{name}/{version}", version.clone()),
        ("name", "/v1/models/{name}/{version}/index", model_name.clone()),
        ("version", "/v1/models/{name}/{version}/index", version.clone()),
        ("name", "/v1/device/packages/{name}/{version}/delta/{base}", model_name.clone()),
        ("version", "/v1/device/packages/{name}/{version}/delta/{base}", version.clone()),
        ("base", "/v1/device/packages/{name}/{version}/delta/{base}", version.clone()),
        ("name", "/v1/device/packages/{name}/{version}/delta/{base}/blobs", model_name),
        ("version", "/v1/device/packages/{name}/{version}/delta/{base}/blobs", version.clone()),
        ("base", "/v1/device/packages/{name}/{version}/delta/{base}/blobs", version),
        (
            "action",
            "/v1/rollouts/{id}/{action}",
            json!({"type": "string", "enum": ["pause", "resume", "abort", "rollback", "promote"]}),
        ),
    ];
    for (path, item) in doc["paths"].as_object_mut().into_iter().flatten() {
        let ops = item.as_object_mut().into_iter().flat_map(|item| item.values_mut());
        for param in ops.filter_map(|op| op.get_mut("parameters")?.as_array_mut()).flatten() {
            let applies = |(name, only, _): &&(&str, &str, serde_json::Value)| {
                param["name"] == *name && (only.is_empty() || only == path)
            };
            if let Some((_, _, schema)) = params.iter().find(applies) {
                param["schema"] = schema.clone();
            }
        }
    }
    // What `serve::limits` may answer before any route runs.
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    let early: &[(&str, &str)] = &[
        ("414", "uri_too_long: the path and query are over 8 KiB"),
        ("415", "unsupported_encoding: the body is compressed"),
        ("431", "headers_too_large: over 64 headers or 32 KiB of headers"),
    ];
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(|item| item.as_object_mut()).flat_map(|item| item.values_mut()) {
            for (code, description) in early {
                if op["responses"].get(*code).is_none() {
                    op["responses"][*code] = json!({"description": description, "content": error});
                }
            }
        }
    }
    rewrite_refs(doc, "#/components/schemas/BTreeMap", "#/components/schemas/Labels");
    forbid_nul(doc);
}

/// Gate texts the server accepts (`outpost_proto::fleet::rollout::Gate`, which also allows
/// spaces): a metric with its operator and a limit in its unit; percentages up to 100, ratios
/// above 0.
const GATE_PATTERN: &str = concat!(
    "^(?:error_rate<(?:(?:100(?:\\.0+)?|[0-9]{1,2}(?:\\.[0-9]+)?)%|(?:[0-9]*[1-9][0-9]*(?:\\.[0-9]+)?|[0-9]+\\.[0-9]*[1-9][0-9]*)x)",
    "|p(?:50|99)_latency<(?:[0-9]{1,12}(?:\\.[0-9]+)?ms|(?:[0-9]*[1-9][0-9]*(?:\\.[0-9]+)?|[0-9]+\\.[0-9]*[1-9][0-9]*)x)",
    "|shadow_agreement>(?:100(?:\\.0+)?|[0-9]{1,2}(?:\\.[0-9]+)?)%",
    "|drift_alerts<(?:100(?:\\.0+)?|[0-9]{1,2}(?:\\.[0-9]+)?)%",
    "|drift_score<(?:[0-9]{1,12}(?:\\.[0-9]+)?|(?:[0-9]*[1-9][0-9]*(?:\\.[0-9]+)?|[0-9]+\\.[0-9]*[1-9][0-9]*)x))$"
);

/// Label key grammar ([`outpost_proto::fleet::selector::validate_key`]).
const LABEL_KEY_PATTERN: &str = "^[A-Za-z0-9._/-]{1,253}$";
/// Label value grammar ([`outpost_proto::fleet::selector::validate_value`]).
const LABEL_VALUE_PATTERN: &str = "^[A-Za-z0-9._/-]{0,63}$";

fn rewrite_refs(value: &mut serde_json::Value, from: &str, to: &str) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "$ref" && v == from {
                    *v = serde_json::Value::String(to.into());
                } else {
                    rewrite_refs(v, from, to);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, from, to)),
        _ => {}
    }
}

/// Device bodies may not hold NUL characters anywhere (PostgreSQL text cannot store them, and
/// one bad report would fail a whole batch), and operator text fields are refused by PostgreSQL
/// when they hold one: say so on every free-form string of a request body or parameter (those
/// without a pattern or enum of their own). Response schemas are left alone.
fn forbid_nul(doc: &mut serde_json::Value) {
    fn walk(value: &mut serde_json::Value, refs: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                let is_string = map
                    .get("type")
                    .is_some_and(|t| t == "string" || t.as_array().is_some_and(|a| a.iter().any(|x| x == "string")));
                if is_string && !map.contains_key("pattern") && !map.contains_key("enum") {
                    map.insert("pattern".into(), serde_json::Value::String("^[^\\u0000]*$".into()));
                }
                if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                    refs.push(r.trim_start_matches("#/components/schemas/").to_string());
                }
                map.values_mut().for_each(|v| walk(v, refs));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let mut pending = Vec::new();
    let paths = doc["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut());
    for op in paths.filter_map(|item| item.as_object_mut()).flat_map(|item| item.values_mut()) {
        if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
            params.iter_mut().for_each(|p| walk(&mut p["schema"], &mut Vec::new()));
        }
        if let Some(body) = op.get_mut("requestBody") {
            walk(body, &mut pending);
        }
    }
    let mut done = std::collections::BTreeSet::new();
    while let Some(name) = pending.pop() {
        if done.insert(name.clone()) {
            if let Some(schema) = doc["components"]["schemas"].get_mut(&name) {
                walk(schema, &mut pending);
            }
        }
    }
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Operator API token (`opt_...`); roles viewer < operator < admin"))
                    .build(),
            ),
        );
        let header =
            |name: &str, what: &str| SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(name, what)));
        components.add_security_scheme("device_id", header(HEADER_DEVICE, "Device id (at enrollment: the key's id)"));
        components.add_security_scheme("device_timestamp", header(HEADER_TIMESTAMP, "Signing time, Unix ms"));
        components.add_security_scheme("device_nonce", header(HEADER_NONCE, "Fresh random nonce, 16-64 hex"));
        components.add_security_scheme(
            "device_signature",
            header(HEADER_SIGNATURE, "Base64 Ed25519 signature over the canonical request (OUTPOST-SIG-V1)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        let schemas = &doc["components"]["schemas"];
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected ref {r}"));
            assert!(schemas.get(name).is_some(), "{r} is referenced but not defined");
        }
        assert_eq!(schemas["FleetSummary"]["properties"]["by_status"]["additionalProperties"]["type"], "integer");
        assert_eq!(schemas["Command"]["properties"]["result"].get("type"), None);
    }
}
