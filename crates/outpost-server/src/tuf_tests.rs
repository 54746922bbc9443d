//! The server's repository against the device's client: what it accepts from an operator,
//! what it refuses, and signing again after a key rotation.

use super::*;
use outpost_tuf::operator::{sign_next_targets, Places};
use outpost_tuf::{DirRemote, TufClient};
use std::time::SystemTime;

struct Setup {
    _tmp: tempfile::TempDir,
    places: Places,
    repo: TufRepo,
    client_dir: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let places = Places { keys_dir: tmp.path().join("keys"), repo_dir: data.join("tuf") };
    let root = places.init(365).unwrap();
    let client_dir = tmp.path().join("device");
    TufClient::init(&client_dir, &root).unwrap();
    Setup { repo: TufRepo::open(&data), places, client_dir, _tmp: tmp }
}

impl Setup {
    fn targets_key(&self) -> RoleKey {
        RoleKey::load(&self.places.key_path("targets")).unwrap()
    }

    fn next_targets(&self, path: &str, length: u64, sha: &str) -> Vec<u8> {
        let entry = json!({"length": length, "hashes": {"sha256": sha}});
        sign_next_targets(&self.repo.targets().unwrap(), &self.targets_key(), path, entry).unwrap()
    }

    async fn device_refresh(&self) -> Result<TufClient, outpost_tuf::TufError> {
        let mut client = TufClient::open(&self.client_dir, DirRemote::new(&self.places.repo_dir))?;
        client.refresh(jiff::Timestamp::now()).await?;
        Ok(client)
    }
}

fn published(path: &str, length: u64, sha: &str) -> Result<(), String> {
    (path == "m/m-1.opkg" && length == 3 && sha == "ab".repeat(32)).then_some(()).ok_or_else(|| "not published".into())
}

#[tokio::test]
async fn operator_signed_targets_are_published_with_fresh_snapshot_and_timestamp() {
    let s = setup();
    assert!(s.repo.refresh_online(SystemTime::now()).unwrap(), "the first start signs");
    assert!(!s.repo.refresh_online(SystemTime::now()).unwrap(), "nothing is due right after");
    s.device_refresh().await.unwrap();
    let v =
        s.repo.put_targets(&s.next_targets("m/m-1.opkg", 3, &"ab".repeat(32)), published, SystemTime::now()).unwrap();
    assert_eq!(v, 2);
    let mut client = s.device_refresh().await.unwrap();
    let info = client.target("m/m-1.opkg", jiff::Timestamp::now()).await.unwrap();
    assert_eq!(info.length, 3);
    // Past half the timestamp's life, the server signs again by itself.
    let later = SystemTime::now() + TIMESTAMP_LIFETIME * 3 / 4;
    assert!(s.repo.refresh_online(later).unwrap());
}

#[tokio::test]
async fn targets_that_do_not_verify_follow_or_match_the_registry_are_refused() {
    let s = setup();
    s.repo.refresh_online(SystemTime::now()).unwrap();
    let now = SystemTime::now();
    let unpublished = s.next_targets("m/m-9.opkg", 3, &"ab".repeat(32));
    assert!(
        matches!(s.repo.put_targets(&unpublished, published, now), Err(TufRepoError::Refused(m)) if m.contains("not published"))
    );
    let wrong_hash = s.next_targets("m/m-1.opkg", 3, &"cd".repeat(32));
    assert!(s.repo.put_targets(&wrong_hash, published, now).is_err());
    // Signed by a key the root does not name for targets.
    let entry = json!({"length": 3, "hashes": {"sha256": "ab".repeat(32)}});
    let forged = sign_next_targets(&s.repo.targets().unwrap(), &RoleKey::generate(), "m/m-1.opkg", entry).unwrap();
    assert!(
        matches!(s.repo.put_targets(&forged, published, now), Err(TufRepoError::Refused(m)) if m.contains("0 of 1"))
    );
    let good = s.next_targets("m/m-1.opkg", 3, &"ab".repeat(32));
    s.repo.put_targets(&good, published, now).unwrap();
    // The same version again is not the next one.
    assert!(
        matches!(s.repo.put_targets(&good, published, now), Err(TufRepoError::Refused(m)) if m.contains("does not follow"))
    );
}

#[tokio::test]
async fn after_a_timestamp_key_rotation_the_server_signs_with_the_new_key_and_devices_follow() {
    let s = setup();
    s.repo.refresh_online(SystemTime::now()).unwrap();
    s.device_refresh().await.unwrap();
    let new_key = s.places.rotate("timestamp", 365).unwrap();
    assert!(s.repo.refresh_online(SystemTime::now()).unwrap(), "a new root is a reason to sign again");
    s.device_refresh().await.unwrap();
    let trusted: Value = serde_json::from_slice(&std::fs::read(s.client_dir.join("timestamp.json")).unwrap()).unwrap();
    assert_eq!(trusted["signatures"][0]["keyid"], new_key.key_id());
    let root: Value = serde_json::from_slice(&std::fs::read(s.client_dir.join("root.json")).unwrap()).unwrap();
    assert_eq!(root["signed"]["version"], 2);
    // A targets key rotation re-signs the targets, so devices still find what was listed.
    s.repo.put_targets(&s.next_targets("m/m-1.opkg", 3, &"ab".repeat(32)), published, SystemTime::now()).unwrap();
    s.places.rotate("targets", 365).unwrap();
    s.repo.refresh_online(SystemTime::now()).unwrap();
    let mut client = s.device_refresh().await.unwrap();
    assert_eq!(client.target("m/m-1.opkg", jiff::Timestamp::now()).await.unwrap().length, 3);
}

fn published_any(path: &str, length: u64, sha: &str) -> Result<(), String> {
    let ok = ["m/m-1.opkg", "vision.cam/vision.cam-1.opkg", "vision.cam/vision.cam-2.opkg"].contains(&path);
    (ok && length == 3 && sha == "ab".repeat(32)).then_some(()).ok_or_else(|| "not published".into())
}

fn role_release(current: &Value, keys: &[&RoleKey], path: &str) -> Release {
    let entry = json!({"length": 3, "hashes": {"sha256": "ab".repeat(32)}});
    let bytes = outpost_tuf::operator::sign_next_targets_by(current, keys, path, entry).unwrap();
    Release { targets: None, roles: vec![("vision".into(), bytes)] }
}

fn refused_with(result: Result<Vec<(String, u64)>, TufRepoError>, text: &str) {
    match result {
        Err(TufRepoError::Refused(m)) => assert!(m.contains(text), "{m:?} lacks {text:?}"),
        other => panic!("expected a refusal with {text:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_namespace_delegated_to_its_own_keys_publishes_without_the_targets_key() {
    use outpost_tuf::delegation::{delegate, namespace_paths, Delegation};
    let s = setup();
    let now = SystemTime::now();
    let targets_key = s.targets_key();
    let team = RoleKey::generate();
    let d = Delegation {
        role: "vision".into(),
        keys: vec![team.clone()],
        threshold: 1,
        paths: namespace_paths(&["vision.*".into()]).unwrap(),
    };
    // Delegating without the role's first version would strand devices: refused.
    let (top, role) = delegate(&s.repo.targets().unwrap(), &[&targets_key], None, &d).unwrap();
    refused_with(
        s.repo.put_release(&Release { targets: Some(top.clone()), roles: vec![] }, published_any, now),
        "no metadata",
    );
    let release = Release { targets: Some(top), roles: vec![("vision".into(), role)] };
    assert_eq!(
        s.repo.put_release(&release, published_any, now).unwrap(),
        vec![("targets".into(), 2), ("vision".into(), 1)]
    );

    // The team signs its model into the role; the targets key is not needed.
    let current = s.repo.role("vision").unwrap();
    refused_with(
        s.repo.put_release(
            &role_release(&current, &[&targets_key], "vision.cam/vision.cam-1.opkg"),
            published_any,
            now,
        ),
        "0 of 1",
    );
    refused_with(
        s.repo.put_release(&role_release(&current, &[&team], "m/m-1.opkg"), published_any, now),
        "outside its paths",
    );
    refused_with(
        s.repo.put_release(&role_release(&current, &[&team], "vision.cam/vision.cam-9.opkg"), published_any, now),
        "not published",
    );
    let mut other = role_release(&current, &[&team], "vision.cam/vision.cam-1.opkg");
    other.roles[0].0 = "audio".into();
    refused_with(s.repo.put_release(&other, published_any, now), "delegate no role named");
    s.repo.put_release(&role_release(&current, &[&team], "vision.cam/vision.cam-1.opkg"), published_any, now).unwrap();
    let mut client = s.device_refresh().await.unwrap();
    assert_eq!(client.target("vision.cam/vision.cam-1.opkg", jiff::Timestamp::now()).await.unwrap().length, 3);
    let snapshot = s.repo.metadata_file("2.snapshot.json").map(|b| serde_json::from_slice::<Value>(&b).unwrap());
    assert_eq!(snapshot.unwrap()["signed"]["meta"]["vision.json"]["version"], 2);
    // The same version again is not the next one.
    refused_with(
        s.repo.put_release(&role_release(&current, &[&team], "vision.cam/vision.cam-1.opkg"), published_any, now),
        "does not follow",
    );

    // A top-level targets version that re-keys the namespace needs the role re-signed with it.
    let new_team = RoleKey::generate();
    let d2 = Delegation { keys: vec![new_team.clone()], ..d };
    let current = s.repo.role("vision").unwrap();
    let (top, role) = delegate(&s.repo.targets().unwrap(), &[&targets_key], Some(&current), &d2).unwrap();
    refused_with(
        s.repo.put_release(&Release { targets: Some(top.clone()), roles: vec![] }, published_any, now),
        "re-keyed",
    );
    s.repo
        .put_release(&Release { targets: Some(top), roles: vec![("vision".into(), role)] }, published_any, now)
        .unwrap();
    refused_with(
        s.repo.put_release(
            &role_release(&s.repo.role("vision").unwrap(), &[&team], "vision.cam/vision.cam-2.opkg"),
            published_any,
            now,
        ),
        "0 of 1",
    );
    s.repo
        .put_release(
            &role_release(&s.repo.role("vision").unwrap(), &[&new_team], "vision.cam/vision.cam-2.opkg"),
            published_any,
            now,
        )
        .unwrap();
    let mut client = s.device_refresh().await.unwrap();
    assert_eq!(
        client.target("vision.cam/vision.cam-1.opkg", jiff::Timestamp::now()).await.unwrap().length,
        3,
        "kept across re-keying"
    );
    assert_eq!(client.target("vision.cam/vision.cam-2.opkg", jiff::Timestamp::now()).await.unwrap().length, 3);

    // One level of delegation only, and no reserved names.
    let mut nested = s.repo.role("vision").unwrap();
    nested["delegations"] =
        json!({"keys": {}, "roles": [{"name": "deeper", "keyids": [], "threshold": 1, "paths": ["*"]}]});
    refused_with(
        s.repo.put_release(&role_release(&nested, &[&new_team], "vision.cam/vision.cam-2.opkg"), published_any, now),
        "one level",
    );
    let mut reserved = role_release(&s.repo.role("vision").unwrap(), &[&new_team], "vision.cam/vision.cam-2.opkg");
    reserved.roles[0].0 = "snapshot".into();
    refused_with(s.repo.put_release(&reserved, published_any, now), "top-level");
}
