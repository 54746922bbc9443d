use super::fixtures::*;
use super::*;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, NodeProto};

fn no_symbols() -> BTreeMap<String, i64> {
    BTreeMap::new()
}

#[test]
fn mlp_report_lists_io_parameters_operators_and_loads_on_tract() {
    let r = inspect(&mlp(), &no_symbols()).unwrap();
    assert_eq!((r.ir_version, r.opsets.get("ai.onnx"), r.graph_name.as_str()), (8, Some(&17), "mlp"));
    assert_eq!((r.producer_name.as_str(), r.producer_version.as_str()), ("outpost-test", "1"));
    let x = &r.inputs[0];
    assert_eq!((r.inputs.len(), x.name.as_str(), x.dtype.as_str()), (1, "x", "FP32"));
    assert_eq!(x.shape, Some(vec![Dim::Symbol("batch".into()), Dim::Fixed(64)]));
    assert_eq!(r.outputs[0].shape, Some(vec![Dim::Symbol("batch".into()), Dim::Fixed(32)]));
    assert_eq!((r.initializers, r.parameters, r.parameter_bytes), (2, 64 * 32 + 32, 4 * (64 * 32 + 32)));
    assert_eq!(r.parameters_by_dtype["FP32"], ParameterStats { count: 2080, bytes: 8320 });
    let ops: Vec<(&str, usize)> = r.op_histogram.iter().map(|o| (o.op_type.as_str(), o.count)).collect();
    assert_eq!(ops, [("Add", 1), ("MatMul", 1), ("Relu", 1)]);
    assert!(r.unsupported_ops.is_empty() && r.subgraph_ops.is_empty());
    assert_eq!(r.tract_loads, Ok(()));
}

/// tract's cost model counts the MatMul as 64·32 multiply-adds per row = 2·64·32 FLOPs; the
/// bias Add and the Relu are at most one operation per output element each (tract counts
/// neither today), so the estimate lies in [2·64·32, 2·64·32 + 2·32] per batch row.
#[test]
fn flops_of_a_matmul_are_two_per_multiply_add_and_scale_with_the_batch() {
    let matmul = 2 * 64 * 32;
    let one = inspect(&mlp(), &no_symbols()).unwrap().flops.unwrap();
    assert!((matmul..=matmul + 2 * 32).contains(&one.total), "{one:?}");
    assert_eq!(one.assumed_one, ["batch"]);
    let four = inspect(&mlp(), &BTreeMap::from([("batch".to_string(), 4)])).unwrap().flops.unwrap();
    assert_eq!(four.total, 4 * one.total);
    assert!(four.assumed_one.is_empty() && !four.excludes_subgraphs);
}

#[test]
fn an_operator_tract_lacks_is_listed_and_the_load_check_fails_without_error() {
    let m = model(GraphProto {
        node: vec![node("NotARealOp", &["x"], &["y"])],
        input: vec![value("x", DataType::Float, &[1, 4])],
        output: vec![value("y", DataType::Float, &[1, 4])],
        ..Default::default()
    });
    let r = inspect(&encode(&m), &no_symbols()).unwrap();
    assert_eq!(unsupported::summary(&r.unsupported_ops), "NotARealOp ×1 (ai.onnx)");
    assert!(r.tract_loads.as_ref().unwrap_err().contains("NotARealOp"));
    assert!(r.flops.is_err());
}

#[test]
fn operators_inside_if_branches_are_counted_and_checked() {
    let branch = |op: &str| GraphProto {
        node: vec![node(op, &["x"], &["out"])],
        output: vec![value("out", DataType::Float, &[1, 4])],
        ..Default::default()
    };
    let attr = |name: &str, g: GraphProto| AttributeProto {
        name: name.into(),
        r#type: AttributeType::Graph as i32,
        g: Some(g),
        ..Default::default()
    };
    let if_node = NodeProto {
        attribute: vec![attr("then_branch", branch("Relu")), attr("else_branch", branch("NotARealOp"))],
        ..node("If", &["cond"], &["y"])
    };
    let m = model(GraphProto {
        node: vec![if_node],
        input: vec![value("cond", DataType::Bool, &[]), value("x", DataType::Float, &[1, 4])],
        output: vec![value("y", DataType::Float, &[1, 4])],
        ..Default::default()
    });
    let r = inspect(&encode(&m), &no_symbols()).unwrap();
    assert_eq!(r.subgraph_ops, BTreeMap::from([("If".to_string(), 1)]));
    assert_eq!(unsupported::summary(&r.unsupported_ops), "NotARealOp ×1 (ai.onnx)");
    assert_eq!(r.op_histogram.iter().map(|o| o.count).sum::<usize>(), 3);
    assert_eq!(r.inputs[0].dtype, "BOOL");
}

#[test]
fn an_output_nobody_produces_is_reported_instead_of_crashing_tract() {
    let m = model(GraphProto {
        node: vec![node("Relu", &["x"], &["y"])],
        input: vec![value("x", DataType::Float, &[1, 4])],
        output: vec![value("z", DataType::Float, &[1, 4])],
        ..Default::default()
    });
    let r = inspect(&encode(&m), &no_symbols()).unwrap();
    assert!(r.tract_loads.unwrap_err().contains("output(s) `z` produced by no node"));
    assert!(r.flops.unwrap_err().contains("`z`"));
}

#[test]
fn garbage_and_truncated_files_are_model_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.onnx");
    let named = |e: RuntimeError| matches!(&e, RuntimeError::Model { model, .. } if model.contains("broken.onnx"));
    for garbage in [&b""[..], b"\x00\x01\x02garbage\xff\xff\xff\xff", b"not an onnx file at all"] {
        std::fs::write(&path, garbage).unwrap();
        assert!(named(inspect_file(&path, &no_symbols()).unwrap_err()), "{garbage:?}");
    }
    let whole = mlp();
    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    assert!(named(inspect_file(&path, &no_symbols()).unwrap_err()));
    // Cut anywhere: an error or (cut between two fields) a report, never a panic.
    for len in (0..whole.len()).step_by(97) {
        let _ = inspect(&whole[..len], &no_symbols());
    }
    let missing = inspect_file(&dir.path().join("absent.onnx"), &no_symbols()).unwrap_err();
    assert!(missing.to_string().contains("absent.onnx"));
}

#[test]
fn json_report_spells_outcomes_as_ok_flags() {
    let r = inspect(&mlp(), &no_symbols()).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["tract_loads"], serde_json::json!({"ok": true}));
    assert_eq!(json["flops"]["ok"], true);
    assert!(json["flops"]["total"].as_u64().unwrap() >= 4096);
    assert_eq!(json["inputs"][0]["shape"], serde_json::json!(["batch", 64]));
    let text = r.to_string();
    assert!(text.contains("MatMul 1") && text.contains("[batch, 64]") && text.contains("loads"), "{text}");
}

/// Paddle's exporter names dimensions `p2o.DynamicDimension.N`. This graph repeats the shape
/// arithmetic of PaddleOCR's detector — two stride-2 convolutions, a 2× upsampling, an `Add` and a
/// `Concat` of the two paths — whose sizes agree for every concrete height but which tract cannot
/// prove equal while the height is a symbol.
fn paddle_like() -> Vec<u8> {
    use crate::test_graphs::{self as g, D};
    let conv = |x: &str, y: &str| {
        g::node("Conv", &[x, "w"], &[y], vec![g::ints("strides", &[2, 1]), g::ints("pads", &[1, 0, 1, 0])])
    };
    let scales = TensorProto {
        name: "scales".into(),
        dims: vec![4],
        data_type: DataType::Float as i32,
        float_data: vec![1.0, 1.0, 2.0, 1.0],
        ..Default::default()
    };
    let dims = [D::S("p2o.DynamicDimension.0"), D::N(1), D::S("p2o.DynamicDimension.1"), D::N(1)];
    g::encode(GraphProto {
        node: vec![
            conv("x", "c1"),
            conv("c1", "c2"),
            g::node("Resize", &["c2", "", "scales"], &["up"], vec![]),
            g::node("Add", &["c1", "up"], &["sum"], vec![]),
            g::node("Concat", &["sum", "up"], &["y"], vec![g::int("axis", 1)]),
        ],
        initializer: vec![g::table("w", &[1, 1, 3, 1]), scales],
        input: vec![g::value("x", DataType::Float, &dims)],
        output: vec![g::value("y", DataType::Float, &[D::Unnamed, D::Unnamed, D::Unnamed, D::Unnamed])],
        ..Default::default()
    })
}

#[test]
fn dotted_symbol_names_are_assumed_or_pinned_like_plain_ones() {
    let onnx = paddle_like();
    let (d0, d1) = ("p2o.DynamicDimension.0".to_string(), "p2o.DynamicDimension.1".to_string());
    let unpinned = inspect(&onnx, &no_symbols()).unwrap().flops.unwrap();
    assert_eq!(unpinned.assumed_one, [d0.clone(), d1.clone()]);
    let batch = inspect(&onnx, &BTreeMap::from([(d0.clone(), 1)])).unwrap().flops.unwrap();
    assert_eq!((batch.total, batch.assumed_one), (unpinned.total, vec![d1.clone()]));
    let tall = inspect(&onnx, &BTreeMap::from([(d0, 1), (d1, 64)])).unwrap();
    let tall_flops = tall.flops.unwrap();
    assert!(tall_flops.assumed_one.is_empty() && tall_flops.total > 16 * unpinned.total, "{tall_flops:?}");
    assert_eq!(tall.tract_loads, Ok(()));
}

#[test]
fn unnamed_input_dims_are_taken_as_one_and_named_in_the_report() {
    use crate::test_graphs::{self as g, D};
    let onnx = g::encode(GraphProto {
        node: vec![g::node("MatMul", &["x", "W"], &["y"], vec![])],
        initializer: vec![g::table("W", &[64, 32])],
        input: vec![g::value("x", DataType::Float, &[D::Unnamed, D::N(64)])],
        output: vec![g::value("y", DataType::Float, &[D::Unnamed, D::N(32)])],
        ..Default::default()
    });
    let flops = inspect(&onnx, &no_symbols()).unwrap().flops.unwrap();
    assert_eq!((flops.total, flops.assumed_one), (2 * 64 * 32, vec!["x[0]".to_string()]));
}

/// The real exports, when `scripts/fetch-models.sh` has fetched them.
#[test]
fn paddle_ocr_exports_estimate_with_and_without_pinned_symbols() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/models");
    for (file, pins) in [
        ("ppocr-det.onnx", vec![("p2o.DynamicDimension.0", 1)]),
        (
            "ppocr-det.onnx",
            vec![("p2o.DynamicDimension.0", 1), ("p2o.DynamicDimension.1", 640), ("p2o.DynamicDimension.2", 640)],
        ),
        ("ppocr-rec.onnx", vec![("p2o.DynamicDimension.0", 1), ("p2o.DynamicDimension.1", 320)]),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            eprintln!("{} absent (scripts/fetch-models.sh fetches it); skipped", path.display());
            continue;
        }
        for symbols in [no_symbols(), pins.iter().map(|(k, v)| (k.to_string(), *v)).collect()] {
            let r = inspect_file(&path, &symbols).unwrap();
            let flops = r.flops.unwrap_or_else(|e| panic!("{file} with {symbols:?}: {e}"));
            assert!(flops.total > 0 && symbols.keys().all(|s| !flops.assumed_one.contains(s)), "{flops:?}");
        }
    }
}

#[test]
fn a_forest_of_unsupported_nodes_is_named_once_per_type_with_its_count_domain_and_a_way_out() {
    use crate::backend::tract::TractEngine;
    use crate::test_graphs::{self as g, D};
    let in_domain = |domain: &str, n: NodeProto| NodeProto { domain: domain.into(), ..n };
    let mut nodes: Vec<NodeProto> = (0..100)
        .map(|i| in_domain("ai.onnx.ml", g::node("NotARealTree", &["x"], &[&format!("t{i}")], vec![])))
        .collect();
    nodes.push(in_domain("com.example", g::node("AlsoMissing", &["x"], &["s"], vec![])));
    nodes.push(g::node("Relu", &["x"], &["y"], vec![]));
    let onnx = g::encode(GraphProto {
        node: nodes,
        input: vec![g::value("x", DataType::Float, &[D::N(1), D::N(4)])],
        output: vec![g::value("y", DataType::Float, &[D::N(1), D::N(4)])],
        ..Default::default()
    });
    let expected = "unsupported operators: NotARealTree ×100 (ai.onnx.ml), AlsoMissing ×1 (com.example); use the \
                    onnxruntime backend (`--backend onnxruntime`, or `auto` with libonnxruntime available) or \
                    re-export without them";
    let opts = EngineOptions { model_name: "forest".into(), ..Default::default() };
    let err = TractEngine::load(&onnx, &opts).unwrap_err();
    assert_eq!(err.to_string(), format!("model `forest`: {expected}"));
    let r = inspect(&onnx, &no_symbols()).unwrap();
    assert_eq!(r.tract_loads.as_ref().unwrap_err(), expected);
    let listed: Vec<(&str, &str, usize)> =
        r.unsupported_ops.iter().map(|o| (o.op_type.as_str(), o.domain.as_str(), o.count)).collect();
    assert_eq!(listed, [("NotARealTree", "ai.onnx.ml", 100), ("AlsoMissing", "com.example", 1)]);
    assert!(r.to_string().contains("unsupported  NotARealTree ×100 (ai.onnx.ml), AlsoMissing ×1 (com.example)\n"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["unsupported_ops"][0],
        serde_json::json!({"op_type": "NotARealTree", "domain": "ai.onnx.ml", "count": 100})
    );
}
