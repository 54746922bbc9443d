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
