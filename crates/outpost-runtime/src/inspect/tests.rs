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
    assert_eq!(r.unsupported_ops, ["NotARealOp"]);
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
    assert_eq!(r.unsupported_ops, ["NotARealOp"]);
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
