//! Model packages: publish through the artifact store (a local directory and a real
//! S3-compatible server, moto), download whole and by range, conflicts, bad uploads, and the
//! package in a device's desired state. The same scenario runs on every store and database.

use crate::common::db::test_databases;
use crate::common::package::{manifest, opkg, sha256, start_moto, tar_of};
use crate::common::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A raw HTTP answer (package bodies are not JSON).
struct Raw {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let r = req.send().await.expect("request");
    Raw { status: r.status(), headers: r.headers().clone(), body: r.bytes().await.expect("body").to_vec() }
}

async fn publish(s: &TestServer, token: &str, body: Vec<u8>) -> Raw {
    let url = format!("{}/v1/model-packages", s.base);
    raw(s.http().post(url).bearer_auth(token).header("content-type", "application/octet-stream").body(body)).await
}

async fn download(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut req = s.http().get(format!("{}{path}", s.base)).bearer_auth(&s.admin);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    raw(req).await
}

async fn scenario(s: &TestServer) {
    let label = s.label.clone();
    let model: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let v1 = opkg("detector", "1", &model);
    let r = publish(s, &s.admin, v1.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{label}: {}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["package"]["sha256"], sha256(&v1), "{label}: the server measures the hash itself");
    assert_eq!(body["package"]["size_bytes"], v1.len(), "{label}");
    assert_eq!(
        (body["name"].as_str(), body["version"].as_str(), body["task"].as_str()),
        (Some("detector"), Some("1"), Some("anomaly"))
    );

    // The same bytes again change nothing; other bytes under the same version are refused.
    assert_eq!(publish(s, &s.admin, v1.clone()).await.status, StatusCode::OK, "{label}");
    let mut other = model.clone();
    other[5] ^= 1;
    let r = publish(s, &s.admin, opkg("detector", "1", &other)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{label}: {}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["message"].as_str().unwrap().contains("other bytes"), "{label}");

    // Only operators publish.
    let viewer = s.api_token(&format!("viewer-{label}"), "viewer").await;
    assert_eq!(publish(s, &viewer, opkg("detector", "2", &model)).await.status, StatusCode::FORBIDDEN);

    // Uploads that are not packages, or broken ones, are refused with the reason.
    let bad_hash = {
        let m = manifest("detector", "3", &[("model.onnx", &model)]);
        tar_of(&[("manifest.toml", m.as_bytes()), ("model.onnx", &other)])
    };
    let missing = {
        let m = manifest("detector", "3", &[("model.onnx", &model)]);
        tar_of(&[("manifest.toml", m.as_bytes())])
    };
    let evil_name = opkg("../../etc", "3", &model);
    for (what, body, needle) in [
        ("garbage", b"{\"not\": \"a tar\"}".repeat(40), "not a package"),
        ("hash mismatch", bad_hash, "model.onnx` has sha256"),
        ("missing file", missing, "listed in the manifest but missing"),
        ("bad name", evil_name, "../../etc"),
    ] {
        let r = publish(s, &s.admin, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{label}: {what}");
        let message = r.json()["message"].as_str().unwrap_or("").to_string();
        assert_eq!(r.json()["code"], "invalid_package", "{label}: {what}");
        assert!(message.contains(needle), "{label}: {what}: {message}");
    }
    assert_eq!(publish(s, &s.admin, Vec::new()).await.status, StatusCode::UNPROCESSABLE_ENTITY, "{label}: empty");

    // Downloads: whole, then ranges as a resuming client asks.
    let path = "/v1/models/detector/1/package";
    let r = download(s, path, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{label}");
    assert!(r.body == v1, "{label}: the bytes published come back");
    assert_eq!(r.header("etag"), format!("\"{}\"", sha256(&v1)));
    assert_eq!(r.header("accept-ranges"), "bytes");
    let r = download(s, path, &[("range", "bytes=1000-")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{label}");
    assert!(r.body == v1[1000..], "{label}");
    assert_eq!(r.header("content-range"), format!("bytes 1000-{}/{}", v1.len() - 1, v1.len()));
    let r = download(s, path, &[("range", "bytes=-100")]).await;
    assert!(r.status == StatusCode::PARTIAL_CONTENT && r.body == v1[v1.len() - 100..], "{label}");
    let r = download(s, path, &[("range", "bytes=10-19")]).await;
    assert!(r.body == v1[10..20], "{label}");
    let past = format!("bytes={}-", v1.len());
    let r = download(s, path, &[("range", &past)]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{label}");
    assert_eq!(r.header("content-range"), format!("bytes */{}", v1.len()));
    // A resume against other bytes (another ETag) gets the whole object.
    let r = download(s, path, &[("range", "bytes=1000-"), ("if-range", "\"0000\"")]).await;
    assert!(r.status == StatusCode::OK && r.body == v1, "{label}");
    assert_eq!(download(s, "/v1/models/detector/9/package", &[]).await.status, StatusCode::NOT_FOUND);

    // A version published as metadata only has no package to download.
    let r = s.op(Method::POST, "/v1/models", Some(&s.admin), Some(json!({"name": "legacy", "version": "1"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{label}");
    assert_eq!(download(s, "/v1/models/legacy/1/package", &[]).await.status, StatusCode::NOT_FOUND);

    // Devices: the desired state names the package, and the signed route serves it by range.
    let dev = s.enrolled_device(json!({"site": "berlin"})).await;
    let r = s
        .op(
            Method::POST,
            "/v1/assignments",
            Some(&s.admin),
            Some(json!({"selector": "site=berlin", "model": "detector", "version": "1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{label}");
    let desired = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
    assert_eq!(desired.body["models"][0]["package"]["sha256"], sha256(&v1), "{label}: {:?}", desired.body);
    let dpath = "/v1/device/packages/detector/1";
    let mut req = s.http().get(format!("{}{dpath}", s.base)).header("range", "bytes=5-");
    for (k, v) in dev.headers("GET", dpath, b"") {
        req = req.header(k, v);
    }
    let r = raw(req).await;
    assert!(r.status == StatusCode::PARTIAL_CONTENT && r.body == v1[5..], "{label}: {}", r.status);
    assert_eq!(raw(s.http().get(format!("{}{dpath}", s.base))).await.status, StatusCode::UNAUTHORIZED, "{label}");

    // The registry lists it with its package.
    let r = s.op(Method::GET, "/v1/models/detector", Some(&viewer), None).await;
    assert_eq!(r.body[0]["package"]["size_bytes"], v1.len(), "{label}");
}

#[tokio::test]
async fn packages_publish_and_download_on_a_local_directory_and_on_s3() {
    let moto = start_moto();
    for (db_label, url) in test_databases().await {
        let s = TestServer::start(&format!("{db_label}+dir"), &url).await;
        scenario(&s).await;
        // The bytes are in the data dir's artifact store, under their hash.
        s.stop().await;
    }
    let Some(moto) = moto else { return };
    for (i, (db_label, url)) in test_databases().await.into_iter().enumerate() {
        let bucket = format!("outpost-test-{i}-{:08x}", rand::random::<u32>());
        moto.bucket(&bucket).await;
        let s = TestServer::start_with(&format!("{db_label}+s3"), &url, |c| moto.configure(c, &bucket)).await;
        scenario(&s).await;
        // A restarted server (with an empty data dir of its own) reads the same bucket.
        let s = s.restart_with(|c| moto.configure(c, &bucket)).await;
        let r = download(&s, "/v1/models/detector/1/package", &[("range", "bytes=0-3")]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", s.label);
        s.stop().await;
    }
}

#[tokio::test]
async fn uploads_over_the_package_limit_are_refused_while_streaming() {
    let (label, url) = test_databases().await.into_iter().next().expect("a database");
    let s = TestServer::start_with(&label, &url, |c| c.max_package_bytes = 64 << 10).await;
    let big = opkg("big", "1", &vec![1u8; 100 << 10]);
    let r = publish(&s, &s.admin, big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&r.body));
    let small = opkg("small", "1", &[1u8; 1000]);
    assert_eq!(publish(&s, &s.admin, small).await.status, StatusCode::CREATED);
    s.stop().await;
}
