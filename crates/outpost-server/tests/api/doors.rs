//! Attacks on the operator API's doors from the hardening campaign: names that climb out of a
//! directory, the last admin token, bodies of the wrong JSON shape, and requests too large for
//! a handler to see. Each test is named after the attack it stops.

use super::on_every_database;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn rejects_model_names_that_climb_out_of_a_directory_at_every_door() {
    on_every_database(|s| async move {
        let dev = s.enrolled_device(json!({"site": "berlin"})).await;
        let ok =
            s.op(Method::POST, "/v1/models", Some(&s.admin), Some(json!({"name": "defect", "version": "3"}))).await;
        assert_eq!(ok.status, StatusCode::CREATED, "{}: {:?}", s.label, ok.body);
        for (name, version) in
            [("../../../../tmp/x", "1"), ("defect", "../1"), (".hidden", "1"), ("a/b", "1"), ("Defect", "1")]
        {
            let body = json!({"name": name, "version": version});
            let r = s.op(Method::POST, "/v1/models", Some(&s.admin), Some(body)).await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::BAD_REQUEST, "invalid_request"),
                "{}: {name}@{version}",
                s.label
            );
            let body = json!({"selector": "site=berlin", "model": name, "version": version});
            let r = s.op(Method::POST, "/v1/assignments", Some(&s.admin), Some(body)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: assignment {name}@{version}", s.label);
            let body = json!({"models": {name: version}});
            let r = s.op(Method::PUT, &format!("/v1/devices/{}/override", dev.id), Some(&s.admin), Some(body)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: override {name}@{version}", s.label);
        }
        // Removing a model through an override (empty version) is still allowed.
        let body = json!({"models": {"defect": ""}});
        let r = s.op(Method::PUT, &format!("/v1/devices/{}/override", dev.id), Some(&s.admin), Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        // The device is never told about a bad name: its desired state holds none.
        let r = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", s.label);
        assert!(!r.body.to_string().contains(".."), "{}: {}", s.label, r.body);
        s
    })
    .await;
}

#[tokio::test]
async fn refuses_to_revoke_the_last_admin_over_the_api() {
    on_every_database(|s| async move {
        let list = s.op(Method::GET, "/v1/api-tokens", Some(&s.admin), None).await;
        let boot = list.body["items"][0]["id"].as_str().unwrap().to_string();
        let r = s.op(Method::DELETE, &format!("/v1/api-tokens/{boot}"), Some(&s.admin), None).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "last_admin"), "{}", s.label);
        let r = s.op(Method::GET, "/v1/audit", Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}: the admin must still work", s.label);
        let second = s.api_token("second-admin", "admin").await;
        let r = s.op(Method::DELETE, &format!("/v1/api-tokens/{boot}"), Some(&second), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn a_json_array_does_not_wipe_an_override() {
    on_every_database(|s| async move {
        let dev = s.enrolled_device(json!({})).await;
        let path = format!("/v1/devices/{}/override", dev.id);
        let body = json!({"models": {"defect": "3"}});
        assert_eq!(s.op(Method::PUT, &path, Some(&s.admin), Some(body)).await.status, StatusCode::OK);
        for raw in [&b"[]"[..], b" [ ]", b"[{}, {}]", b"\"x\"", b"7", b"null", b""] {
            let r = s.op_raw(Method::PUT, &path, Some(&s.admin), Some(raw.to_vec())).await;
            assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{}: {raw:?}", s.label);
        }
        let r = s.op(Method::GET, &path, Some(&s.admin), None).await;
        assert_eq!(r.body["models"], json!({"defect": "3"}), "{}: the override was changed", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn oversized_uris_headers_and_compressed_bodies_get_json_errors() {
    on_every_database(|s| async move {
        let long = format!("/v1/devices?selector={}", "a".repeat(20_000));
        let r = s.op(Method::GET, &long, Some(&s.admin), None).await;
        assert_eq!((r.status, r.code()), (StatusCode::URI_TOO_LONG, "uri_too_long"), "{}", s.label);
        // Past the 64 KiB that hyper itself refuses with an empty body, too.
        let many: Vec<(String, String)> = (0..200).map(|i| (format!("x-h{i}"), "1".into())).collect();
        let headers: Vec<(&str, String)> = many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let r = s.send(Method::GET, "/healthz", &headers, vec![]).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
            "{}",
            s.label
        );
        let big = [("x-big", "a".repeat(40_000))];
        let r = s.send(Method::GET, "/healthz", &big, vec![]).await;
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{}", s.label);
        let gzip = [("authorization", format!("Bearer {}", s.admin)), ("content-encoding", "gzip".into())];
        let r = s.send(Method::POST, "/v1/models", &gzip, br#"{"name":"m","version":"1"}"#.to_vec()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding"), "{}", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn schema_valid_token_names_are_accepted_and_blank_ones_refused() {
    on_every_database(|s| async move {
        // 200 characters of a 2-byte letter: within the documented maxLength (characters).
        for name in ["ä".repeat(200), " x ".into(), "\u{a0}".into()] {
            let body = json!({"name": name, "role": "viewer"});
            let r = s.op(Method::POST, "/v1/api-tokens", Some(&s.admin), Some(body)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}: {name:?}: {:?}", s.label, r.body);
        }
        for name in ["".to_string(), " \t\n".into(), "x".repeat(201)] {
            let body = json!({"name": name, "role": "viewer"});
            let r = s.op(Method::POST, "/v1/api-tokens", Some(&s.admin), Some(body)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: {name:?}", s.label);
        }
        s
    })
    .await;
}
