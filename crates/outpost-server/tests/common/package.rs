//! Model packages built byte by byte (the server reads only the tar and the manifest), and an
//! S3-compatible server (moto) for the artifact-store tests.

use sha2::{Digest, Sha256};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A manifest for `name@version` listing `files` with their hashes.
pub fn manifest(name: &str, version: &str, files: &[(&str, &[u8])]) -> String {
    let mut text = format!(
        "format = 1\n\n[model]\nname = \"{name}\"\nversion = \"{version}\"\ntask = \"anomaly\"\n\n\
         [[inputs]]\nname = \"window\"\ndtype = \"FP32\"\nshape = [1, 8]\n\n\
         [[outputs]]\nname = \"score\"\ndtype = \"FP32\"\nshape = [1]\n\n[files]\n"
    );
    for (file, bytes) in files {
        text.push_str(&format!("\"{file}\" = \"{}\"\n", hex::encode(Sha256::digest(bytes))));
    }
    text
}

/// A tar of `entries` in order.
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A valid package of `name@version` whose model file is `model`.
pub fn opkg(name: &str, version: &str, model: &[u8]) -> Vec<u8> {
    let m = manifest(name, version, &[("model.onnx", model)]);
    tar_of(&[("manifest.toml", m.as_bytes()), ("model.onnx", model)])
}

/// Lowercase hex sha256.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A moto S3 server on a free port, stopped on drop.
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("OUTPOST_MOTO_SERVER") {
        return Some(p.into());
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyvenv/bin/moto_server");
    venv.exists().then_some(venv)
}

/// Starts moto, or `None` when it is not installed (a failure under CI=true: the S3 tests
/// must run there, never skip).
pub fn start_moto() -> Option<Moto> {
    let Some(binary) = moto_binary() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but moto_server is not installed (scripts/test.sh installs it into target/pyvenv)"
        );
        eprintln!(
            "moto_server not found (pip install 'moto[server]' into target/pyvenv): S3 artifact-store runs skipped"
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let moto = Moto { endpoint: format!("http://127.0.0.1:{port}"), child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

impl Moto {
    /// Creates `bucket` (moto takes unsigned requests).
    pub async fn bucket(&self, bucket: &str) {
        let r = reqwest::Client::new().put(format!("{}/{bucket}", self.endpoint)).send().await.expect("create bucket");
        assert!(r.status().is_success(), "creating bucket {bucket}: {}", r.status());
    }

    /// Server settings that keep packages in `bucket` under `prefix`.
    pub fn configure(&self, config: &mut outpost_server::ServerConfig, bucket: &str) {
        config.artifact_store = Some(format!("s3://{bucket}/packages-under-test"));
        for (k, v) in [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
        ] {
            config.artifact_store_options.insert(k.into(), v.into());
        }
    }
}
