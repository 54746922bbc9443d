//! Delegated targets roles, one per model namespace: the operator's targets keys sign only
//! *which* keys may vouch for which model names; a team holding a namespace's keys then signs
//! its own models into that role without ever touching the targets keys. Each role is
//! terminating, so a namespace's targets are looked up in its role and nowhere below it.
//!
//! A namespace covers model-name globs (`vision.*` by default): the role's `paths` are
//! `GLOB/*`, matching the target paths `NAME/NAME-VERSION.opkg` the registry uses.

use crate::operator::{days, next_targets, TARGETS_DAYS};
use crate::writer::{sign, RoleKey, WriteError};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Role names a delegation may not take: the top-level roles' file names.
pub const RESERVED: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];
/// Longest delegated role name.
pub const ROLE_NAME_MAX: usize = 128;

fn invalid(m: impl Into<String>) -> WriteError {
    WriteError::Invalid(m.into())
}

/// Whether `name` may name a delegated role: not a top-level role, printable ASCII, at most
/// [`ROLE_NAME_MAX`] bytes (it is percent-encoded in file names and URLs).
pub fn check_role_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > ROLE_NAME_MAX || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("role name {name:?}: 1-{ROLE_NAME_MAX} printable ASCII characters"));
    }
    if RESERVED.contains(&name) {
        return Err(format!("role name {name:?} is a top-level role's"));
    }
    Ok(())
}

/// Shell-style match of one path component (`*`, `?`, `[seq]`, `[!seq]`), as the TUF
/// specification's `paths` use fnmatch.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with one backtrack point: linear in practice, no recursion on hostile input.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, text[t]),
            Some(&c) if c == text[t] => Some(p + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Where the pattern goes on after the class at `p` if `c` is in it.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut i = p + 1;
    let negate = matches!(pattern.get(i), Some(b'!'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut hit = false;
    while let Some(&b) = pattern.get(i) {
        if b == b']' && i > start {
            return (hit != negate).then_some(i + 1);
        }
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            hit |= (b..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= b == c;
            i += 1;
        }
    }
    // No closing bracket: the `[` is a literal.
    (c == b'[').then_some(p + 1)
}

/// Whether `target` matches a `paths` pattern: the same number of `/`-separated components,
/// each matching its glob.
pub fn path_matches(pattern: &str, target: &str) -> bool {
    let (pp, tp): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), target.split('/').collect());
    pp.len() == tp.len() && pp.iter().zip(&tp).all(|(p, t)| glob(p.as_bytes(), t.as_bytes()))
}

/// Whether a delegated role entry (of a `delegations.roles` list) covers `target`, by its
/// `paths` or its `path_hash_prefixes`.
pub fn role_covers(role: &Value, target: &str) -> bool {
    if let Some(paths) = role["paths"].as_array() {
        return paths.iter().filter_map(Value::as_str).any(|p| path_matches(p, target));
    }
    if let Some(prefixes) = role["path_hash_prefixes"].as_array() {
        let hash = hex::encode(Sha256::digest(target.as_bytes()));
        return prefixes.iter().filter_map(Value::as_str).any(|p| hash.starts_with(p));
    }
    false
}

/// The first delegated role of a targets `signed` part that covers `target`, in the order the
/// client searches them.
pub fn role_for<'a>(targets: &'a Value, target: &str) -> Option<&'a Value> {
    targets["delegations"]["roles"].as_array()?.iter().find(|r| role_covers(r, target))
}

/// The `paths` of a namespace covering these model-name globs.
pub fn namespace_paths(globs: &[String]) -> Result<Vec<String>, WriteError> {
    if globs.is_empty() {
        return Err(invalid("a namespace covers at least one model-name glob"));
    }
    globs
        .iter()
        .map(|g| {
            let ok = !g.is_empty()
                && g.len() <= 64
                && g.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-*?[]!".contains(&b));
            if ok {
                Ok(format!("{g}/*"))
            } else {
                Err(invalid(format!("{g:?}: a model-name glob is a-z 0-9 . _ - and * ? [ ] !")))
            }
        })
        .collect()
}

/// A delegation to make or re-key.
#[derive(Debug, Clone)]
pub struct Delegation {
    /// The role's name (the namespace).
    pub role: String,
    /// The keys that may sign it.
    pub keys: Vec<RoleKey>,
    /// How many of them must.
    pub threshold: u32,
    /// Target path patterns it covers.
    pub paths: Vec<String>,
}

/// Signs the next top-level targets (after `top`, by `top_keys`) delegating `d`, replacing
/// any delegation of the same name, and the next version of the role itself (after
/// `role_current`, keeping its targets, or an empty version 1) by the role's keys. Returns
/// (top-level bytes, role bytes): they must be released together.
pub fn delegate(
    top: &Value,
    top_keys: &[&RoleKey],
    role_current: Option<&Value>,
    d: &Delegation,
) -> Result<(Vec<u8>, Vec<u8>), WriteError> {
    check_role_name(&d.role).map_err(invalid)?;
    if d.keys.is_empty() || d.threshold == 0 || d.threshold as usize > d.keys.len() {
        return Err(invalid(format!("{} keys with threshold {}", d.keys.len(), d.threshold)));
    }
    let mut signed = next_targets(top)?;
    let delegations = signed["delegations"].as_object().cloned().unwrap_or_default();
    let mut roles: Vec<Value> = delegations.get("roles").and_then(Value::as_array).cloned().unwrap_or_default();
    let entry = json!({"name": d.role, "keyids": d.keys.iter().map(RoleKey::key_id).collect::<Vec<_>>(),
        "threshold": d.threshold, "terminating": true, "paths": d.paths});
    match roles.iter_mut().find(|r| r["name"] == d.role.as_str()) {
        Some(r) => *r = entry,
        None => roles.push(entry),
    }
    let mut keys: Map<String, Value> = delegations.get("keys").and_then(Value::as_object).cloned().unwrap_or_default();
    for k in &d.keys {
        keys.insert(k.key_id(), k.public());
    }
    // Keys no role names any more (a re-keyed namespace's old ones) leave the list.
    let used: std::collections::BTreeSet<String> = roles
        .iter()
        .flat_map(|r| r["keyids"].as_array().cloned().unwrap_or_default())
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    keys.retain(|id, _| used.contains(id));
    signed["delegations"] = json!({"keys": keys, "roles": roles});
    let top_bytes = sign(&signed, top_keys);
    let role_signed = match role_current {
        Some(current) if current["version"].as_u64().unwrap_or(0) > 0 => next_targets(current)?,
        _ => json!({"_type": "targets", "spec_version": crate::writer::SPEC_VERSION, "version": 1,
                    "expires": crate::writer::expires(days(TARGETS_DAYS)?), "targets": {}}),
    };
    let role_keys: Vec<&RoleKey> = d.keys.iter().collect();
    Ok((top_bytes, sign(&role_signed, &role_keys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_component_by_component_like_fnmatch() {
        assert!(path_matches("vision.*/*", "vision.detector/vision.detector-2.opkg"));
        assert!(!path_matches("vision.*/*", "vision/vision-2.opkg"));
        assert!(!path_matches("vision.*/*", "vision.a/b/c"), "`*` does not cross a `/`");
        assert!(path_matches("*", "anything"));
        assert!(path_matches("a?c/[a-c]x[!0-9]", "abc/bxz"));
        assert!(!path_matches("a?c/[a-c]x[!0-9]", "abc/dxz"));
        assert!(!path_matches("a?c/[a-c]x[!0-9]", "abc/bx5"));
        assert!(path_matches("a[b", "a[b"));
        assert!(path_matches("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaab"));
        assert!(!path_matches("*a*a*a*a*b", &"a".repeat(5000)));
    }

    #[test]
    fn hash_prefixes_cover_targets_by_their_path_hash() {
        let hash = hex::encode(Sha256::digest(b"m/m-1.opkg"));
        assert!(role_covers(&json!({"path_hash_prefixes": [&hash[..2]]}), "m/m-1.opkg"));
        assert!(!role_covers(&json!({"path_hash_prefixes": ["zz"]}), "m/m-1.opkg"));
        assert!(!role_covers(&json!({}), "m/m-1.opkg"));
    }

    #[test]
    fn delegating_again_replaces_the_role_and_drops_its_old_keys() {
        let top_key = RoleKey::from_seed([1; 32]);
        let top = json!({"_type": "targets", "version": 3, "targets": {"a/a-1.opkg": {}}});
        let d = Delegation {
            role: "vision".into(),
            keys: vec![RoleKey::from_seed([2; 32])],
            threshold: 1,
            paths: namespace_paths(&["vision.*".into()]).unwrap(),
        };
        let (t1, r1) = delegate(&top, &[&top_key], None, &d).unwrap();
        let t1: Value = serde_json::from_slice::<Value>(&t1).unwrap()["signed"].clone();
        let r1: Value = serde_json::from_slice::<Value>(&r1).unwrap()["signed"].clone();
        assert_eq!(t1["version"], 4);
        assert_eq!(t1["targets"]["a/a-1.opkg"], json!({}));
        assert_eq!(r1["version"], 1);
        let d2 = Delegation { keys: vec![RoleKey::from_seed([3; 32])], ..d };
        let (t2, r2) = delegate(&t1, &[&top_key], Some(&r1), &d2).unwrap();
        let t2: Value = serde_json::from_slice::<Value>(&t2).unwrap()["signed"].clone();
        assert_eq!(t2["delegations"]["roles"].as_array().unwrap().len(), 1);
        let ids: Vec<&String> = t2["delegations"]["keys"].as_object().unwrap().keys().collect();
        assert_eq!(ids, vec![&d2.keys[0].key_id()]);
        assert_eq!(serde_json::from_slice::<Value>(&r2).unwrap()["signed"]["version"], 2);
        assert!(role_for(&t2, "vision.cam/vision.cam-1.opkg").is_some());
        assert!(role_for(&t2, "audio/audio-1.opkg").is_none());
        assert!(check_role_name("snapshot").is_err() && check_role_name("a b").is_err());
    }
}
