//! The OpenAPI document served at `/openapi.json`, generated from the route annotations so it
//! cannot drift from the handlers.

use crate::routes::{self, channel, devices, registry};
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
        channel::enroll, channel::heartbeat, channel::reports, channel::desired_state, channel::ack_command,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "devices", description = "Inventory, labels, overrides, commands"),
        (name = "tokens", description = "Enrollment and API tokens"),
        (name = "models", description = "Model registry"),
        (name = "assignments", description = "Which model versions run where"),
        (name = "audit", description = "Who changed what"),
        (name = "device", description = "The signed device channel"),
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
    doc
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
