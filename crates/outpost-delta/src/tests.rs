//! Round trips on packages made here: an ONNX protobuf written field by field (so the test
//! controls every byte) inside a tar, changed the ways retraining changes a model.

use crate::plan::Plan;
use crate::{held_pieces, DeltaError, Held, Index, PieceKind, Step};
use std::fs::File;
use std::path::{Path, PathBuf};

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field(n: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(n << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn tensor(name: &str, dims: &[u64], values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for d in dims {
        varint(1 << 3, &mut t);
        varint(*d, &mut t);
    }
    varint(2 << 3, &mut t);
    varint(1, &mut t);
    field(8, name.as_bytes(), &mut t);
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    field(9, &raw, &mut t);
    t
}

/// A model: initializers, a Constant node's tensor, and an `If` node whose subgraph holds one.
fn model(inits: &[(&str, Vec<u64>, Vec<f32>)], constant: &[f32], sub: &[f32]) -> Vec<u8> {
    let mut graph = Vec::new();
    let mut attr = Vec::new();
    field(1, b"value", &mut attr);
    field(5, &tensor("", &[constant.len() as u64], constant), &mut attr);
    let mut node = Vec::new();
    field(2, b"const_out", &mut node);
    field(4, b"Constant", &mut node);
    field(5, &attr, &mut node);
    field(1, &node, &mut graph);
    let mut subgraph = Vec::new();
    field(5, &tensor("sub_w", &[sub.len() as u64], sub), &mut subgraph);
    let mut sub_attr = Vec::new();
    field(1, b"then_branch", &mut sub_attr);
    field(6, &subgraph, &mut sub_attr);
    let mut if_node = Vec::new();
    field(4, b"If", &mut if_node);
    field(5, &sub_attr, &mut if_node);
    field(1, &if_node, &mut graph);
    for (name, dims, values) in inits {
        field(5, &tensor(name, dims, values), &mut graph);
    }
    let mut m = Vec::new();
    varint(1 << 3, &mut m);
    varint(8, &mut m); // ir_version
    field(7, &graph, &mut m);
    m
}

fn package(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let mut b = tar::Builder::new(File::create(&path).unwrap());
    for (n, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, n, *bytes).unwrap();
    }
    b.finish().unwrap();
    path
}

/// Deterministic noise in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Pair {
    _dir: tempfile::TempDir,
    base: PathBuf,
    new: PathBuf,
}

fn refs<'a>(f: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    f.iter().map(|(n, b)| (*n, b.as_slice())).collect()
}

fn pair(base_files: &[(&'static str, Vec<u8>)], new_files: &[(&'static str, Vec<u8>)]) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let base = package(dir.path(), "base.opkg", &refs(base_files));
    let new = package(dir.path(), "new.opkg", &refs(new_files));
    Pair { _dir: dir, base, new }
}

/// Makes the plan, applies it the way a device does and returns it with the rebuilt bytes.
fn round_trip(p: &Pair, held: &Held) -> Result<(Plan, Vec<u8>), DeltaError> {
    let (bi, ni) = (Index::of_package(&p.base)?, Index::of_package(&p.new)?);
    let mut blobs = Vec::new();
    let plan = Plan::make(&p.new, &ni, Some((&p.base, &bi)), &mut blobs)?;
    let plan = Plan::from_bytes(&plan.to_bytes()?)?;
    let fetches = plan.fetches(held);
    let local = p._dir.path().join("local.blobs");
    let mut bytes = Vec::new();
    for f in &fetches {
        bytes.extend_from_slice(&blobs[f.at as usize..(f.at + f.size) as usize]);
    }
    std::fs::write(&local, &bytes).unwrap();
    let base = File::open(&p.base).unwrap();
    let mut out = Vec::new();
    plan.apply(&File::open(&local).unwrap(), &fetches, Some((&base, &bi)), held, &mut out)?;
    Ok((plan, out))
}

fn weights(seed: u64) -> Vec<(&'static str, Vec<u64>, Vec<f32>)> {
    vec![
        ("conv1.weight", vec![16, 3, 3, 3], noise(seed, 16 * 27)),
        ("conv2.weight", vec![32, 16, 3, 3], noise(seed + 1, 32 * 144)),
        ("fc.weight", vec![10, 512], noise(seed + 2, 5120)),
        ("fc.bias", vec![10], noise(seed + 3, 10)),
    ]
}

fn manifest() -> Vec<u8> {
    b"name = \"m\"\nversion = \"1\"\n".to_vec()
}

#[test]
fn the_walker_finds_initializers_constants_and_subgraph_tensors_where_they_are() {
    let m = model(&weights(1), &noise(9, 100), &noise(10, 70));
    let spans = crate::onnx::tensor_spans(std::io::Cursor::new(&m), 0, m.len() as u64).unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["const_out", "sub_w", "conv1.weight", "conv2.weight", "fc.weight", "fc.bias"]);
    let conv2 = &spans[3];
    assert_eq!((conv2.elem, conv2.data_type, conv2.first_dim, conv2.len), (4, 1, 32, 32 * 144 * 4));
    let expect: Vec<u8> = weights(1)[1].2.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(&m[conv2.offset as usize..(conv2.offset + conv2.len) as usize], expect.as_slice());
    // Truncated or garbage protobuf is an error, never a panic or a wrong span.
    assert!(crate::onnx::tensor_spans(std::io::Cursor::new(&m[..m.len() - 7]), 0, m.len() as u64 - 7).is_err());
    assert!(crate::onnx::tensor_spans(std::io::Cursor::new(vec![0xff; 64]), 0, 64).is_err());
}

#[test]
fn a_fine_tune_rebuilds_bit_exactly_and_costs_less_than_zstd_of_the_new_file() {
    let base = weights(1);
    // Every weight moved a little, as after a full fine-tune.
    let mut new = base.clone();
    for (_, _, v) in new.iter_mut() {
        for (x, d) in v.iter_mut().zip(noise(77, 100_000)) {
            *x += d * 1e-3 * x.abs();
        }
    }
    let (constant, sub) = (noise(9, 2000), noise(10, 1500));
    let p = pair(
        &[("manifest.toml", manifest()), ("model.onnx", model(&base, &constant, &sub))],
        &[("manifest.toml", manifest()), ("model.onnx", model(&new, &constant, &sub))],
    );
    let (plan, out) = round_trip(&p, &Held::new()).unwrap();
    assert_eq!(out, std::fs::read(&p.new).unwrap());
    let plain = zstd::bulk::compress(&std::fs::read(&p.new).unwrap(), 19).unwrap().len() as u64;
    assert!(plan.blobs_size * 10 < plain * 8, "delta {} vs zstd {plain}", plan.blobs_size);
    // The unchanged Constant and subgraph tensors are references.
    assert_eq!(plan.steps.iter().filter(|s| matches!(s, Step::Ref { .. })).count(), 2);
}

#[test]
fn a_scaled_convolution_ships_as_factors_and_a_tiny_residual() {
    let base = weights(1);
    let mut new = base.clone();
    // Folded BatchNorm moved: each output channel of conv2 times its own factor.
    let per = new[1].2.len() / 32;
    for (k, x) in new[1].2.iter_mut().enumerate() {
        *x *= 1.0 + 0.01 * (k / per) as f32;
    }
    let p = pair(
        &[("model.onnx", model(&base, &[1.0; 80], &[2.0; 80]))],
        &[("model.onnx", model(&new, &[1.0; 80], &[2.0; 80]))],
    );
    let (plan, out) = round_trip(&p, &Held::new()).unwrap();
    assert_eq!(out, std::fs::read(&p.new).unwrap());
    let conv2 = plan.steps.iter().find_map(|s| match s {
        Step::Blob(b) if b.len == 32 * 144 * 4 => Some(b.clone()),
        _ => None,
    });
    let conv2 = conv2.expect("conv2 is a blob");
    assert!(matches!(conv2.codec, crate::Codec::Scaled { channels: 32, .. }), "{:?}", conv2.codec);
    assert!(conv2.size < conv2.len / 20, "{} of {}", conv2.size, conv2.len);
}

#[test]
fn a_re_export_in_another_order_is_all_references_and_a_small_frame() {
    let base = weights(1);
    let mut new = base.clone();
    new.reverse();
    let p = pair(
        &[("model.onnx", model(&base, &[1.0; 80], &[2.0; 80]))],
        &[("model.onnx", model(&new, &[1.0; 80], &[2.0; 80]))],
    );
    let (plan, out) = round_trip(&p, &Held::new()).unwrap();
    assert_eq!(out, std::fs::read(&p.new).unwrap());
    assert!(plan.steps.iter().all(|s| !matches!(s, Step::Blob(_))));
    let sent = plan.to_bytes().unwrap().len() as u64 + plan.blobs_size;
    assert!(sent < 1024, "{sent} bytes for a reordering");
}

#[test]
fn pieces_held_in_another_version_are_copied_not_fetched() {
    let base = weights(1);
    let other = weights(5);
    let p = pair(
        &[("model.onnx", model(&base, &[1.0; 80], &[2.0; 80]))],
        &[("model.onnx", model(&other, &[1.0; 80], &[2.0; 80]))],
    );
    // A third package on the device that already has the new weights.
    let dir = tempfile::tempdir().unwrap();
    let held_pkg = package(dir.path(), "old.opkg", &[("x.onnx", &model(&other, &[3.0; 80], &[4.0; 80]))]);
    let held = held_pieces(&[held_pkg]);
    let (plan, out) = round_trip(&p, &held).unwrap();
    assert_eq!(out, std::fs::read(&p.new).unwrap());
    assert_eq!(plan.fetches(&held).len(), 1, "only the frame is fetched");
}

#[test]
fn other_files_and_non_packages_fall_back_to_generic_deltas() {
    let mut data = noise(3, 600_000).iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let base = data.clone();
    data[1_000_000..1_000_100].fill(7);
    let p = pair(&[("labels.bin", base)], &[("labels.bin", data)]);
    let (plan, out) = round_trip(&p, &Held::new()).unwrap();
    assert_eq!(out, std::fs::read(&p.new).unwrap());
    assert!(plan.blobs_size < 4096, "{} bytes for a 100-byte change", plan.blobs_size);
    let index = Index::of_package(&p.new).unwrap();
    assert!(index.pieces.iter().all(|p| matches!(p.kind, PieceKind::Chunk { .. })));
}

#[test]
fn a_corrupted_blob_names_the_piece_and_a_forged_plan_is_refused() {
    let base = weights(1);
    let new = weights(2);
    let p = pair(
        &[("model.onnx", model(&base, &[1.0; 80], &[2.0; 80]))],
        &[("model.onnx", model(&new, &[1.0; 80], &[2.0; 80]))],
    );
    let (bi, ni) = (Index::of_package(&p.base).unwrap(), Index::of_package(&p.new).unwrap());
    let mut blobs = Vec::new();
    let plan = Plan::make(&p.new, &ni, Some((&p.base, &bi)), &mut blobs).unwrap();
    let fetches = plan.fetches(&Held::new());
    let victim = plan.steps.iter().enumerate().rev().find_map(|(i, s)| match s {
        Step::Blob(b) => Some((i, b.clone())),
        _ => None,
    });
    let (step, blob) = victim.unwrap();
    let local = p._dir.path().join("local.blobs");
    let mut bytes = blobs.clone();
    bytes[(blob.at + blob.size / 2) as usize] ^= 0x40;
    std::fs::write(&local, &bytes).unwrap();
    let base_file = File::open(&p.base).unwrap();
    let err = plan
        .apply(&File::open(&local).unwrap(), &fetches, Some((&base_file, &bi)), &Held::new(), &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, DeltaError::PieceMismatch { step: s, at } if s == step && at == blob.at), "{err:?}");
    // Against another base it is refused before a byte is written.
    let mut out = Vec::new();
    let err = plan.apply(&File::open(&local).unwrap(), &fetches, Some((&base_file, &ni)), &Held::new(), &mut out);
    assert!(err.is_err() && out.is_empty());
    // Forged plans: a reference past the base, steps that do not add up, garbage.
    let mut forged = plan.clone();
    forged.steps.push(Step::Ref { at: bi.size, len: 1 });
    assert!(Plan::from_bytes(&forged.to_bytes().unwrap()).is_err());
    let mut forged = plan.clone();
    forged.target.size += 1;
    assert!(Plan::from_bytes(&forged.to_bytes().unwrap()).is_err());
    assert!(Plan::from_bytes(b"not zstd").is_err());
    let bomb = zstd::bulk::compress(&vec![b' '; 80 << 20], 3).unwrap();
    assert!(Plan::from_bytes(&bomb).is_err());
}

#[test]
fn a_lossy_release_ships_as_codes_and_rebuilds_the_published_bytes_exactly() {
    let base = weights(1);
    let mut trained = base.clone();
    for (_, _, v) in trained.iter_mut() {
        for (x, d) in v.iter_mut().zip(noise(77, 100_000)) {
            *x += d * 1e-3 * x.abs();
        }
    }
    let (constant, sub) = (noise(9, 2000), noise(10, 1500));
    let base_onnx = model(&base, &constant, &sub);
    let trained_onnx = model(&trained, &constant, &sub);
    let crate::quant::Rounded { onnx: lossy, scales: tensors, stats } =
        crate::quant::quantize(&base_onnx, &trained_onnx, 8, crate::quant::Granularity::Channel).unwrap();
    assert_eq!(lossy.len(), trained_onnx.len(), "only weight bytes change");
    assert_eq!((stats.tensors, stats.kept), (4, 0), "{stats:?}");
    assert!(stats.max_abs_error > 0.0 && stats.max_abs_error < 1e-5, "{stats:?}");
    let base_files = [("manifest.toml", manifest()), ("model.onnx", base_onnx)];
    let base_pkg = pair(&base_files, &base_files);
    let base_sha = Index::of_package(&base_pkg.base).unwrap().sha256;
    let hints = crate::quant::Hints {
        format: crate::quant::HINTS_FORMAT,
        base_sha256: base_sha,
        base_version: "1".into(),
        bits: 8,
        tensors,
    };
    let hints = serde_json::to_vec(&hints).unwrap();
    let make = |onnx: &[u8], hints: &[u8]| {
        pair(
            &base_files,
            &[("manifest.toml", manifest()), ("model.onnx", onnx.to_vec()), (crate::quant::HINTS_FILE, hints.to_vec())],
        )
    };
    let p = make(&lossy, &hints);
    let (plan, out) = round_trip(&p, &Held::new()).unwrap();
    assert_eq!(out, std::fs::read(&p.new).unwrap(), "bit-exact, so the signed hash verifies");
    let quant =
        plan.steps.iter().filter(|s| matches!(s, Step::Blob(b) if matches!(b.codec, crate::Codec::Quant { .. })));
    assert_eq!(quant.count(), 2, "conv2 and fc (smaller tensors stay in the frame)");
    // The same weights without hints cost more; the trained ones more still.
    let (lossless, _) = round_trip(&make(&lossy, b"{}"), &Held::new()).unwrap();
    assert!(plan.blobs_size * 10 < lossless.blobs_size * 7, "{} vs {}", plan.blobs_size, lossless.blobs_size);
    // Hints that do not fit the bytes (another base's scales) fall back to a lossless codec.
    let tampered = crate::quant::quantize(&model(&weights(5), &constant, &sub), &trained_onnx, 8, Default::default())
        .unwrap()
        .onnx;
    let (plan, out) = round_trip(&make(&tampered, &hints), &Held::new()).unwrap();
    assert_eq!(out.len() as u64, plan.target.size);
    assert!(!plan.steps.iter().any(|s| matches!(s, Step::Blob(b) if matches!(b.codec, crate::Codec::Quant { .. }))));
}

#[test]
fn fetches_adjacent_in_both_files_are_asked_for_as_one_range() {
    use crate::Fetch;
    let f = |at, size, local| Fetch { at, size, local };
    let runs = Plan::fetch_runs(&[f(0, 10, 0), f(10, 5, 10), f(40, 3, 15), f(43, 2, 18)]);
    assert_eq!(runs, vec![f(0, 15, 0), f(40, 5, 15)]);
    // A piece held locally leaves a gap in the server's file: two requests.
    assert_eq!(Plan::fetch_runs(&[f(0, 10, 0), f(20, 5, 10)]).len(), 2);
    assert!(Plan::fetch_runs(&[]).is_empty());
}
