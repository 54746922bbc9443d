//! Exported records over HTTP: a device stores them (zstd or plain), once per id, one bad record
//! does not cost the others, no device writes another's, and operators page through them.

use super::on_every_database;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn record(device: &str, seq: u64, kind: &str, model: &str) -> serde_json::Value {
    json!({
        "id": format!("{device}/normal/{seq}"), "kind": kind, "device": device, "model": model,
        "version": "2", "at_ms": 1_764_000_000_000i64 + seq as i64, "labels": {"site": "berlin"},
        "outputs": [{"kind": "anomaly", "score": 0.9, "threshold": 0.5, "anomalous": true}], "confidence": 0.9,
    })
}

#[tokio::test]
async fn devices_store_exported_records_once_and_operators_page_through_them() {
    on_every_database(|s| async move {
        let a = s.enrolled_device(json!({"site": "berlin"})).await;
        let b = s.enrolled_device(json!({})).await;
        let batch = json!({"records": (0..5).map(|i| record(&a.id, i, "result", "bearing")).collect::<Vec<_>>()});
        let r = s.device(&a, Method::POST, "/v1/device/results", Some(batch.clone())).await;
        assert_eq!((r.status, r.body["stored"].clone()), (StatusCode::OK, json!(5)), "{}: {:?}", s.label, r.body);

        // The same batch again, zstd-compressed this time: stored once.
        let raw = serde_json::to_vec(&batch).unwrap();
        let packed = zstd::encode_all(&raw[..], 3).unwrap();
        let mut headers = a.headers("POST", "/v1/device/results", &packed);
        headers.push(("content-encoding", "zstd".into()));
        headers.push(("content-type", "application/json".into()));
        let r = s.send(Method::POST, "/v1/device/results", &headers, packed).await;
        assert_eq!(
            (r.status, r.body["stored"].clone(), r.body["duplicates"].clone()),
            (StatusCode::OK, json!(0), json!(5)),
            "{}: {:?}",
            s.label,
            r.body
        );

        // One bad record among good ones: the good ones are stored, the bad one named.
        let mixed = json!({"records": [
            record(&a.id, 5, "alert", "bearing"),
            record(&b.id, 6, "result", "bearing"),
            {"id": format!("{}/normal/7", a.id), "kind": "raw_input", "at_ms": 1},
            record(&a.id, 8, "event", "camera"),
        ]});
        let r = s.device(&a, Method::POST, "/v1/device/results", Some(mixed)).await;
        assert_eq!((r.status, r.body["stored"].clone()), (StatusCode::OK, json!(2)), "{}: {:?}", s.label, r.body);
        let rejected: Vec<u64> =
            r.body["rejected"].as_array().unwrap().iter().map(|x| x["index"].as_u64().unwrap()).collect();
        assert_eq!(rejected, [1, 2], "{}: another device's id and an unknown kind: {:?}", s.label, r.body);

        // Garbage is refused whole, with a reason; zstd is the only encoding, and only here.
        let garbage = [
            (b"{\"records\": 7}".to_vec(), None, StatusCode::BAD_REQUEST, "invalid_request"),
            (b"not zstd".to_vec(), Some("zstd"), StatusCode::BAD_REQUEST, "invalid_request"),
            (b"{}".to_vec(), Some("br"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding"),
        ];
        for (body, encoding, status, code) in garbage {
            let mut headers = a.headers("POST", "/v1/device/results", &body);
            headers.push(("content-type", "application/json".into()));
            if let Some(e) = encoding {
                headers.push(("content-encoding", e.into()));
            }
            let r = s.send(Method::POST, "/v1/device/results", &headers, body).await;
            assert_eq!((r.status, r.code()), (status, code), "{}: {:?}", s.label, r.body);
        }
        let packed = zstd::encode_all(&br#"{"reports": []}"#[..], 3).unwrap();
        let mut headers = a.headers("POST", "/v1/device/reports", &packed);
        headers.push(("content-encoding", "zstd".into()));
        let r = s.send(Method::POST, "/v1/device/reports", &headers, packed).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}: no other route inflates", s.label);
        let too_many = json!({"records": (0..1001).map(|i| record(&a.id, 100 + i, "result", "m")).collect::<Vec<_>>()});
        let r = s.device(&a, Method::POST, "/v1/device/results", Some(too_many)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", s.label);

        // Unsigned: refused.
        let r = s.op(Method::POST, "/v1/device/results", None, Some(batch)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", s.label);

        // Operators read them back oldest first, filtered and paged.
        let viewer = s.api_token("dash", "viewer").await;
        let all = s.op(Method::GET, "/v1/results?limit=3", Some(&viewer), None).await;
        assert_eq!(all.status, StatusCode::OK, "{}: {:?}", s.label, all.body);
        let ids: Vec<&str> = all.body["items"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [format!("{}/normal/0", a.id), format!("{}/normal/1", a.id), format!("{}/normal/2", a.id)]);
        assert_eq!(all.body["items"][0]["record"]["outputs"][0]["score"], 0.9);
        let next = all.body["next_cursor"].as_str().unwrap().to_string();
        let rest = s.op(Method::GET, &format!("/v1/results?cursor={next}"), Some(&viewer), None).await;
        assert_eq!(rest.body["items"].as_array().unwrap().len(), 4, "{}: {:?}", s.label, rest.body);
        assert!(rest.body.get("next_cursor").is_none());
        let alerts = s.op(Method::GET, "/v1/results?kind=alert", Some(&viewer), None).await;
        assert_eq!(alerts.body["items"].as_array().unwrap().len(), 1, "{}", s.label);
        let camera = s.op(Method::GET, &format!("/v1/results?model=camera&device={}", a.id), Some(&viewer), None).await;
        assert_eq!(camera.body["items"][0]["kind"], "event", "{}", s.label);
        let none = s.op(Method::GET, &format!("/v1/results?device={}", b.id), Some(&viewer), None).await;
        assert!(none.body["items"].as_array().unwrap().is_empty(), "{}: nothing was stored for b", s.label);
        for bad in ["/v1/results?kind=raw", "/v1/results?cursor=x", "/v1/results?limit=0"] {
            let r = s.op(Method::GET, bad, Some(&viewer), None).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: {bad}", s.label);
        }
        let r = s.op(Method::GET, "/v1/results", None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        s
    })
    .await;
}
