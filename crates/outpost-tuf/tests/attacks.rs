//! The client against repositories the writer makes, honest and attacked: each attack of the
//! TUF threat model is a test named after it and must be refused, leaving the trusted
//! metadata as it was.

use outpost_tuf::writer::{root_signed, sign, targets_signed, RepoDir, RoleKey, RoleSpec, Roles};
use outpost_tuf::{DirRemote, TufClient, TufError};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_900_000_000).unwrap()
}

fn days(n: i64) -> jiff::Timestamp {
    now().checked_add(jiff::SignedDuration::from_hours(24 * n)).unwrap()
}

/// A repository, its keys, and a client directory initialised with its first root.
struct Fixture {
    _tmp: tempfile::TempDir,
    repo: RepoDir,
    roles: Roles,
    client_dir: PathBuf,
    targets_dir: PathBuf,
}

fn key(n: u8) -> RoleKey {
    RoleKey::from_seed([n; 32])
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let repo = RepoDir::new(tmp.path().join("repo"));
        let roles = Roles {
            root: RoleSpec::single(key(1)),
            targets: RoleSpec::single(key(2)),
            snapshot: RoleSpec::single(key(3)),
            timestamp: RoleSpec::single(key(4)),
        };
        let root = sign(&root_signed(&roles, 1, days(365)), &[&roles.root.keys[0]]);
        repo.put_metadata("1.root.json", &root).unwrap();
        let client_dir = tmp.path().join("client");
        TufClient::init(&client_dir, &root).unwrap();
        let targets_dir = tmp.path().join("downloads");
        std::fs::create_dir_all(&targets_dir).unwrap();
        Fixture { repo, roles, client_dir, targets_dir, _tmp: tmp }
    }

    /// Publishes `targets` as release `version` (every role at that version).
    fn release(&self, version: u64, targets: &[(&str, &[u8])], expires: jiff::Timestamp) {
        for (name, bytes) in targets {
            self.repo.put_target(name, bytes).unwrap();
        }
        let signed = targets_signed(version, expires, targets, None);
        let keys: Vec<&RoleKey> = self.roles.targets.keys.iter().collect();
        self.repo
            .release(version, &signed, &keys, &[], &self.roles.snapshot.keys[0], &self.roles.timestamp.keys[0], expires)
            .unwrap();
    }

    fn client(&self) -> TufClient {
        TufClient::open(&self.client_dir, DirRemote::new(&self.repo.dir)).unwrap()
    }

    async fn refresh(&self) -> Result<(), TufError> {
        self.client().refresh(now()).await
    }

    async fn download(&self, target: &str) -> Result<PathBuf, TufError> {
        let mut client = self.client();
        client.refresh(now()).await?;
        client.download(target, now(), &self.targets_dir).await
    }

    fn trusted(&self, role: &str) -> Value {
        let bytes = std::fs::read(self.client_dir.join(format!("{role}.json"))).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn metadata_path(&self, name: &str) -> PathBuf {
        self.repo.dir.join("metadata").join(name)
    }
}

fn json_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn honest_release_downloads_verified_targets_and_keeps_only_the_spec_file_names() {
    let f = Fixture::new();
    f.release(1, &[("detector/detector-2.opkg", b"package bytes"), ("plain.bin", b"x")], days(30));
    let path = f.download("detector/detector-2.opkg").await.unwrap();
    assert_eq!(path.file_name().unwrap(), "detector%2Fdetector-2.opkg");
    assert_eq!(std::fs::read(&path).unwrap(), b"package bytes");
    assert_eq!(json_files(&f.client_dir), ["root.json", "snapshot.json", "targets.json", "timestamp.json"]);
    let served = std::fs::read(f.metadata_path("timestamp.json")).unwrap();
    assert_eq!(std::fs::read(f.client_dir.join("timestamp.json")).unwrap(), served, "the exact verified bytes");
    assert!(matches!(f.download("absent.bin").await, Err(TufError::UnknownTarget(_))));
}

#[tokio::test]
async fn rollback_attack_to_an_older_timestamp_is_refused() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"one")], days(30));
    let old = std::fs::read(f.metadata_path("timestamp.json")).unwrap();
    f.release(2, &[("a.bin", b"two")], days(30));
    f.refresh().await.unwrap();
    std::fs::write(f.metadata_path("timestamp.json"), old).unwrap();
    let err = f.refresh().await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("version"), "{err}");
    assert_eq!(f.trusted("timestamp")["signed"]["version"], 2, "the trusted timestamp stays");
}

#[tokio::test]
async fn freeze_attack_with_an_expired_timestamp_is_refused() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"one")], now().checked_sub(jiff::SignedDuration::from_secs(1)).unwrap());
    refused(f.refresh().await, "timestamp metadata expired");
}

#[tokio::test]
async fn freeze_attack_with_an_expired_snapshot_is_refused() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"one")], days(30));
    // A fresh timestamp pinning a snapshot that has expired.
    let past = now().checked_sub(jiff::SignedDuration::from_secs(60)).unwrap();
    let signed = targets_signed(2, days(30), &[("a.bin", b"one")], None);
    let snapshot_key = &f.roles.snapshot.keys[0];
    f.repo
        .release(2, &signed, &[&f.roles.targets.keys[0]], &[], snapshot_key, &f.roles.timestamp.keys[0], past)
        .unwrap();
    let ts: Value = serde_json::from_slice(&std::fs::read(f.metadata_path("timestamp.json")).unwrap()).unwrap();
    let mut fresh = ts["signed"].clone();
    fresh["expires"] = serde_json::json!(outpost_tuf::writer::expires(days(1)));
    std::fs::write(f.metadata_path("timestamp.json"), sign(&fresh, &[&f.roles.timestamp.keys[0]])).unwrap();
    let err = f.refresh().await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn mix_and_match_attack_with_a_snapshot_the_timestamp_does_not_pin_is_refused() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"one")], days(30));
    // Same version, other content: the timestamp's hash pin no longer matches.
    let other = targets_signed(1, days(30), &[("a.bin", b"evil")], None);
    let other_bytes = sign(&other, &[&f.roles.targets.keys[0]]);
    let snapshot = serde_json::json!({"_type": "snapshot", "spec_version": "1.0.31", "version": 1,
        "expires": outpost_tuf::writer::expires(days(30)),
        "meta": {"targets.json": outpost_tuf::writer::meta_entry(&other_bytes, 1)}});
    std::fs::write(f.metadata_path("1.snapshot.json"), sign(&snapshot, &[&f.roles.snapshot.keys[0]])).unwrap();
    refused(f.refresh().await, "snapshot.json: sha256 mismatch");
}

#[tokio::test]
async fn arbitrary_target_attack_with_other_bytes_is_refused() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"genuine")], days(30));
    let hash = hex_sha(b"genuine");
    std::fs::write(f.repo.dir.join("targets").join(format!("{hash}.a.bin")), b"malware").unwrap();
    refused(f.download("a.bin").await, "a.bin: sha256 mismatch");
    assert!(!f.targets_dir.join("a.bin").exists(), "nothing unverified is written");
}

#[tokio::test]
async fn oversized_target_longer_than_its_metadata_says_is_refused() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"genuine")], days(30));
    let hash = hex_sha(b"genuine");
    std::fs::write(f.repo.dir.join("targets").join(format!("{hash}.a.bin")), b"genuine and then some more").unwrap();
    refused(f.download("a.bin").await, "longer than the 7 bytes allowed");
}

#[tokio::test]
async fn endless_data_attack_on_the_timestamp_is_cut_off() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"one")], days(30));
    let mut huge = std::fs::read(f.metadata_path("timestamp.json")).unwrap();
    huge.resize(64 << 20, b' ');
    std::fs::write(f.metadata_path("timestamp.json"), huge).unwrap();
    let err = f.refresh().await.unwrap_err();
    assert!(err.to_string().contains("bytes allowed"), "{err}");
}

#[tokio::test]
async fn forged_signature_by_a_key_the_root_does_not_list_is_refused() {
    let f = Fixture::new();
    f.release(1, &[("a.bin", b"one")], days(30));
    let ts: Value = serde_json::from_slice(&std::fs::read(f.metadata_path("timestamp.json")).unwrap()).unwrap();
    let mut next = ts["signed"].clone();
    next["version"] = serde_json::json!(2);
    std::fs::write(f.metadata_path("timestamp.json"), sign(&next, &[&key(99)])).unwrap();
    refused(f.refresh().await, "threshold not met for role timestamp: 0/1");
}

#[tokio::test]
async fn signatures_below_the_threshold_are_refused() {
    let mut f = Fixture::new();
    // Root v2 asks two targets keys; a release signed by one of them must not verify.
    f.roles.targets = RoleSpec { keys: vec![key(2), key(5)], threshold: 2 };
    let root2 = sign(&root_signed(&f.roles, 2, days(365)), &[&f.roles.root.keys[0]]);
    f.repo.put_metadata("2.root.json", &root2).unwrap();
    let signed = targets_signed(1, days(30), &[("a.bin", b"one")], None);
    f.repo.put_target("a.bin", b"one").unwrap();
    let (s, t) = (&f.roles.snapshot.keys[0], &f.roles.timestamp.keys[0]);
    f.repo.release(1, &signed, &[&key(2)], &[], s, t, days(30)).unwrap();
    refused(f.refresh().await, "threshold not met for role targets: 1/2");
    f.repo
        .release(2, &targets_signed(2, days(30), &[("a.bin", b"one")], None), &[&key(2), &key(5)], &[], s, t, days(30))
        .unwrap();
    f.refresh().await.unwrap();
}

#[tokio::test]
async fn untrusted_root_rotation_not_signed_by_the_old_root_is_refused() {
    let mut f = Fixture::new();
    f.release(1, &[("a.bin", b"one")], days(30));
    f.roles.root = RoleSpec::single(key(50));
    // Signed by the new root key only: the old root never agreed to it.
    let root2 = sign(&root_signed(&f.roles, 2, days(365)), &[&key(50)]);
    f.repo.put_metadata("2.root.json", &root2).unwrap();
    refused(f.refresh().await, "threshold not met for role root: 0/1");
    assert_eq!(f.trusted("root")["signed"]["version"], 1);
    // Signed by old and new, it is taken.
    let root2 = sign(&root_signed(&f.roles, 2, days(365)), &[&key(1), &key(50)]);
    f.repo.put_metadata("2.root.json", &root2).unwrap();
    f.refresh().await.unwrap();
    assert_eq!(f.trusted("root")["signed"]["version"], 2);
}

#[tokio::test]
async fn fast_forward_recovery_after_timestamp_key_rotation() {
    let mut f = Fixture::new();
    // An attacker who held the old timestamp key pushed the client to version 1000.
    f.release(1, &[("a.bin", b"one")], days(30));
    let ts: Value = serde_json::from_slice(&std::fs::read(f.metadata_path("timestamp.json")).unwrap()).unwrap();
    let mut ahead = ts["signed"].clone();
    ahead["version"] = serde_json::json!(1000);
    std::fs::write(f.metadata_path("timestamp.json"), sign(&ahead, &[&f.roles.timestamp.keys[0]])).unwrap();
    f.refresh().await.unwrap();
    assert_eq!(f.trusted("timestamp")["signed"]["version"], 1000);
    // The operators rotate the timestamp key in root v2 and start over at version 2.
    f.roles.timestamp = RoleSpec::single(key(40));
    let root2 = sign(&root_signed(&f.roles, 2, days(365)), &[&f.roles.root.keys[0]]);
    f.repo.put_metadata("2.root.json", &root2).unwrap();
    f.release(2, &[("a.bin", b"two")], days(30));
    f.refresh().await.unwrap();
    assert_eq!(f.trusted("timestamp")["signed"]["version"], 2, "recovered from the fast-forward");
    assert_eq!(std::fs::read(f.download("a.bin").await.unwrap()).unwrap(), b"two");
}

/// Asserts `result` failed with a message containing `why`.
fn refused<T: std::fmt::Debug>(result: Result<T, TufError>, why: &str) {
    let err = result.unwrap_err().to_string();
    assert!(err.contains(why), "refused for another reason than {why:?}: {err}");
}

fn hex_sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn keys_made_with_several_root_and_targets_keys_need_their_thresholds() {
    use outpost_tuf::operator::{KeyCounts, Places};
    let tmp = tempfile::tempdir().unwrap();
    let places = Places { keys_dir: tmp.path().join("keys"), repo_dir: tmp.path().join("repo") };
    let counts = KeyCounts { root: (3, 2), targets: (2, 2) };
    let root = places.init_with(365, counts).unwrap();
    let doc: Value = serde_json::from_slice(&root).unwrap();
    assert_eq!(doc["signed"]["roles"]["root"]["threshold"], 2);
    assert_eq!(doc["signed"]["roles"]["root"]["keyids"].as_array().unwrap().len(), 3);
    assert_eq!(doc["signed"]["roles"]["targets"]["threshold"], 2);
    assert_eq!(doc["signatures"].as_array().unwrap().len(), 3, "root v1 carries every root key's signature");
    assert!(places.nth_key_path("root", 2).exists() && !places.nth_key_path("root", 3).exists());
    // Refused: a threshold above the key count, or no keys.
    let bad = Places { keys_dir: tmp.path().join("k2"), repo_dir: tmp.path().join("r2") };
    assert!(bad.init_with(365, KeyCounts { root: (2, 3), targets: (1, 1) }).is_err());
    assert!(bad.init_with(365, KeyCounts { root: (1, 1), targets: (0, 1) }).is_err());

    let client_dir = tmp.path().join("client");
    TufClient::init(&client_dir, &root).unwrap();
    let repo = RepoDir::new(&places.repo_dir);
    let now = jiff::Timestamp::now();
    let soon = now.checked_add(jiff::SignedDuration::from_hours(24 * 30)).unwrap();
    let targets = places.load_all("targets").unwrap();
    let snapshot = places.load_all("snapshot").unwrap().remove(0);
    let timestamp = places.load_all("timestamp").unwrap().remove(0);
    repo.put_target("a.bin", b"one").unwrap();
    let client = || TufClient::open(&client_dir, DirRemote::new(&repo.dir)).unwrap();
    // One of the two targets keys is below the threshold.
    let signed = targets_signed(2, soon, &[("a.bin", b"one")], None);
    repo.release(2, &signed, &[&targets[0]], &[], &snapshot, &timestamp, soon).unwrap();
    refused(client().refresh(now).await, "threshold not met for role targets: 1/2");
    let signed = targets_signed(3, soon, &[("a.bin", b"one")], None);
    repo.release(3, &signed, &[&targets[0], &targets[1]], &[], &snapshot, &timestamp, soon).unwrap();
    client().refresh(now).await.unwrap();
    // Rotating root replaces all three keys; the new root is signed by old and new, and taken.
    places.rotate("root", 365).unwrap();
    let mut c = client();
    c.refresh(now).await.unwrap();
    let trusted: Value = serde_json::from_slice(&std::fs::read(client_dir.join("root.json")).unwrap()).unwrap();
    assert_eq!(trusted["signed"]["version"], 2);
    assert_eq!(trusted["signed"]["roles"]["root"]["threshold"], 2);
    let new_ids = trusted["signed"]["roles"]["root"]["keyids"].as_array().unwrap().clone();
    assert!(new_ids.iter().all(|id| !doc["signed"]["roles"]["root"]["keyids"].as_array().unwrap().contains(id)));
}
