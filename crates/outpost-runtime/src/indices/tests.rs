use super::*;
use crate::backend::tract::TractEngine;
use crate::backend::{Engine, EngineOptions, IoSpec};
use crate::bench::{generate_inputs, generate_inputs_in};
use crate::inspect::fenced;
use crate::test_graphs::*;
use tract_onnx::pb::GraphProto as Graph;

/// The embedding front of a BERT encoder: `input_ids` index a [30, 8] word table,
/// `token_type_ids` a [2, 8] type table, and `attention_mask` becomes an additive bias through
/// Cast, Unsqueeze, Sub and Mul without ever indexing anything.
fn bert_like() -> Vec<u8> {
    let f32_scalar = |name: &str, v: f32| TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        float_data: vec![v],
        ..Default::default()
    };
    encode(Graph {
        name: "bert-like".into(),
        node: vec![
            node("Gather", &["word_embeddings", "input_ids"], &["words"], vec![]),
            node("Gather", &["token_type_embeddings", "token_type_ids"], &["types"], vec![]),
            node("Add", &["words", "types"], &["embeddings"], vec![]),
            node("Cast", &["attention_mask"], &["mask_f"], vec![int("to", DataType::Float as i64)]),
            node("Unsqueeze", &["mask_f", "last_axis"], &["mask3"], vec![]),
            node("Sub", &["one", "mask3"], &["inverted"], vec![]),
            node("Mul", &["inverted", "minus_big"], &["bias"], vec![]),
            node("Add", &["embeddings", "bias"], &["hidden"], vec![]),
        ],
        initializer: vec![
            table("word_embeddings", &[30, 8]),
            table("token_type_embeddings", &[2, 8]),
            int64s("last_axis", &[1], &[-1]),
            f32_scalar("one", 1.0),
            f32_scalar("minus_big", -10000.0),
        ],
        input: vec![ids("input_ids"), ids("token_type_ids"), ids("attention_mask")],
        output: vec![value("hidden", DataType::Float, &[D::S("batch"), D::S("sequence"), D::N(8)])],
        ..Default::default()
    })
}

fn gather_range(max: i64, source: &str) -> IndexRange {
    IndexRange { min: 0, max, allow_negative: true, source: source.into() }
}

#[test]
fn bert_like_ids_index_their_tables_and_the_attention_mask_indexes_nothing() {
    let ranges = index_ranges(&bert_like());
    assert_eq!(
        ranges,
        BTreeMap::from([
            ("input_ids".to_string(), gather_range(29, "rows of `word_embeddings` (Gather)")),
            ("token_type_ids".to_string(), gather_range(1, "rows of `token_type_embeddings` (Gather)")),
        ])
    );
}

#[test]
fn ranges_follow_integer_casts_and_reshapes_but_not_casts_to_float() {
    let graph = Graph {
        node: vec![
            node("Cast", &["ids", ""], &["ids32"], vec![int("to", DataType::Int32 as i64)]),
            node("Unsqueeze", &["ids32", "axis0"], &["ids3"], vec![]),
            node("Reshape", &["ids3", "flat"], &["ids_flat"], vec![]),
            node("Gather", &["table", "ids_flat"], &["y"], vec![]),
            node("Cast", &["lengths"], &["lengths_f"], vec![int("to", DataType::Float as i64)]),
            node("Gather", &["table", "lengths_f"], &["z"], vec![]),
            // `shape` is an integer input too, but as Reshape's shape it indexes nothing.
            node("Reshape", &["y", "shape"], &["w"], vec![]),
        ],
        initializer: vec![table("table", &[12, 4]), int64s("axis0", &[1], &[0]), int64s("flat", &[1], &[-1])],
        input: vec![ids("ids"), ids("lengths"), value("shape", DataType::Int64, &[D::N(2)])],
        ..Default::default()
    };
    let ranges = index_ranges(&encode(graph));
    assert_eq!(ranges.keys().collect::<Vec<_>>(), ["ids"]);
    assert_eq!(ranges["ids"].max, 11);
}

#[test]
fn a_quantised_table_is_sized_through_dequantize_linear_and_named_by_its_weight() {
    let q = TensorProto {
        name: "word_embeddings_quantized".into(),
        dims: vec![50, 4],
        data_type: DataType::Int8 as i32,
        raw_data: vec![1; 200],
        ..Default::default()
    };
    let graph = Graph {
        node: vec![
            node("DequantizeLinear", &["word_embeddings_quantized", "scale", "zero"], &["dq"], vec![]),
            node("Gather", &["dq", "ids"], &["y"], vec![]),
        ],
        initializer: vec![
            q,
            table("scale", &[]),
            TensorProto {
                name: "zero".into(),
                data_type: DataType::Int8 as i32,
                raw_data: vec![0],
                ..Default::default()
            },
        ],
        input: vec![ids("ids")],
        ..Default::default()
    };
    let ranges = index_ranges(&encode(graph));
    assert_eq!(ranges["ids"], gather_range(49, "rows of `word_embeddings_quantized` (Gather)"));
}

#[test]
fn two_consumers_intersect_to_the_smaller_table_and_its_sign_rule() {
    let embed = NodeProto {
        domain: "com.microsoft".into(),
        ..node(
            "EmbedLayerNormalization",
            &["ids", "", "words", "positions", "", "gamma", "beta"],
            &["out", "mask_index"],
            vec![],
        )
    };
    let graph = Graph {
        node: vec![
            node("Gather", &["big", "ids"], &["a"], vec![]),
            embed,
            node("Gather", &["small", "ids"], &["b"], vec![]),
        ],
        initializer: vec![table("big", &[100, 4]), table("words", &[40, 4]), table("small", &[10, 4])],
        input: vec![ids("ids")],
        ..Default::default()
    };
    let r = &index_ranges(&encode(graph))["ids"];
    assert_eq!((r.min, r.max, r.source.as_str()), (0, 9, "rows of `small` (Gather)"));
    assert!(!r.allow_negative, "EmbedLayerNormalization refuses negative ids, so the intersection does");
}

#[test]
fn embed_layer_normalization_bounds_word_segment_and_position_ids() {
    let embed = NodeProto {
        domain: "com.microsoft".into(),
        ..node(
            "EmbedLayerNormalization",
            &["ids", "segments", "words", "positions", "segment_table", "gamma", "beta", "", "position_ids"],
            &["out", "mask_index"],
            vec![],
        )
    };
    let graph = Graph {
        node: vec![embed],
        initializer: vec![table("words", &[1000, 4]), table("positions", &[128, 4]), table("segment_table", &[2, 4])],
        input: vec![ids("ids"), ids("segments"), ids("position_ids")],
        ..Default::default()
    };
    let ranges = index_ranges(&encode(graph));
    let bound = |n: &str| (ranges[n].max, ranges[n].allow_negative, ranges[n].source.clone());
    assert_eq!(bound("ids"), (999, false, "rows of `words` (EmbedLayerNormalization)".into()));
    assert_eq!(bound("segments").0, 1);
    assert_eq!(bound("position_ids").0, 127);
}

#[test]
fn one_hot_depth_bounds_its_indices_from_an_initializer_or_a_constant_node() {
    let depth_raw = TensorProto {
        name: "depth".into(),
        data_type: DataType::Int32 as i32,
        raw_data: 5i32.to_le_bytes().to_vec(),
        ..Default::default()
    };
    let graph = Graph {
        node: vec![
            node("OneHot", &["labels", "depth", "values"], &["hot"], vec![]),
            node("Constant", &[], &["depth_c"], vec![tensor_attribute("value", int64s("", &[1], &[7]))]),
            node("OneHot", &["classes", "depth_c", "values"], &["hot2"], vec![]),
        ],
        initializer: vec![depth_raw, table("values", &[2])],
        input: vec![ids("labels"), ids("classes")],
        ..Default::default()
    };
    let ranges = index_ranges(&encode(graph));
    assert_eq!((ranges["labels"].max, ranges["classes"].max), (4, 6));
    assert_eq!(ranges["labels"].source, "depth 5 of `OneHot_hot` (OneHot)");
}

#[test]
fn gather_along_other_axes_and_tables_known_only_by_their_declared_shape() {
    let graph = Graph {
        node: vec![
            node("Gather", &["x", "cols"], &["a"], vec![int("axis", 1)]),
            node("Gather", &["x", "last"], &["b"], vec![int("axis", -1)]),
            node("Relu", &["x"], &["xr"], vec![]),
            node("GatherElements", &["xr", "rows"], &["c"], vec![]),
            node("Gather", &["x", "bad_axis"], &["d"], vec![int("axis", 5)]),
        ],
        value_info: vec![value("xr", DataType::Float, &[D::N(4), D::N(7)])],
        input: vec![
            value("x", DataType::Float, &[D::N(4), D::N(7)]),
            ids("cols"),
            ids("last"),
            ids("rows"),
            ids("bad_axis"),
        ],
        ..Default::default()
    };
    let ranges = index_ranges(&encode(graph));
    assert_eq!(ranges["cols"], gather_range(6, "axis 1 of `x` (Gather)"));
    assert_eq!(ranges["last"].max, 6);
    assert_eq!(ranges["rows"], gather_range(3, "rows of `xr` (GatherElements)"));
    assert!(!ranges.contains_key("bad_axis"), "an axis past the rank proves nothing");
}

#[test]
fn tables_of_unknown_size_and_non_integer_inputs_give_no_range() {
    let graph = Graph {
        node: vec![
            node("Gather", &["x", "ids"], &["a"], vec![]),
            node("Gather", &["table", "fids"], &["b"], vec![]),
            node("Gather", &["table", "w"], &["c"], vec![]),
        ],
        initializer: vec![table("table", &[5, 2]), int64s("w", &[1], &[0])],
        input: vec![
            value("x", DataType::Float, &[D::S("rows"), D::N(3)]),
            ids("ids"),
            value("fids", DataType::Float, &[D::N(2)]),
            // An initializer listed among the inputs (IR < 4) is a weight, not a request input.
            value("w", DataType::Int64, &[D::N(1)]),
        ],
        ..Default::default()
    };
    assert!(index_ranges(&encode(graph)).is_empty());
    assert!(index_ranges(b"not an onnx model").is_empty());
    assert!(index_ranges(&[]).is_empty());
}

#[test]
fn a_cyclic_graph_does_not_loop() {
    let graph = Graph {
        node: vec![
            node("Identity", &["ids"], &["a"], vec![]),
            node("Identity", &["b"], &["a2"], vec![]),
            node("Identity", &["a"], &["b"], vec![]),
            node("Identity", &["b"], &["a"], vec![]),
            node("Gather", &["t", "a"], &["y"], vec![]),
            node("Identity", &["t2"], &["t"], vec![]),
            node("Identity", &["t"], &["t2"], vec![]),
        ],
        input: vec![ids("ids")],
        ..Default::default()
    };
    assert!(index_ranges(&encode(graph)).is_empty());
}

/// The graph comes from the client's package: hostile numbers must not overflow or index past
/// anything, and a truncated file must not panic.
#[test]
fn hostile_axes_dims_and_truncated_files_give_no_range_and_no_panic() {
    let huge = TensorProto { dims: vec![i64::MAX, 4, -3], ..int64s("depth", &[], &[]) };
    let graph = Graph {
        node: vec![
            node("Gather", &["t", "a"], &["x"], vec![int("axis", i64::MIN)]),
            node("Gather", &["t", "b"], &["y"], vec![int("axis", i64::MAX)]),
            node("OneHot", &["c", "depth", "v"], &["z"], vec![]),
        ],
        initializer: vec![table("t", &[3, 2]), huge],
        input: vec![ids("a"), ids("b"), ids("c")],
        ..Default::default()
    };
    assert!(index_ranges(&encode(graph)).is_empty());
    let whole = bert_like();
    for len in 0..whole.len() {
        let _ = index_ranges(&whole[..len]);
    }
}

fn i64_tensor(shape: &[usize], data: &[i64]) -> Tensor {
    Tensor::from_shape(shape, data).unwrap()
}

#[test]
fn an_out_of_range_id_is_refused_naming_the_input_value_position_and_table() {
    let ranges = BTreeMap::from([("input_ids".to_string(), gather_range(30521, "rows of `word_embeddings` (Gather)"))]);
    let mut data = vec![101i64; 16];
    data[5] = 30600;
    data[9] = 40000;
    let t = i64_tensor(&[2, 8], &data);
    let err = check_indices(&ranges, &[("input_ids", &t)]).unwrap_err();
    assert!(err.is_client_error());
    assert_eq!(
        err.to_string(),
        "input `input_ids`: value 30600 at [0, 5] is outside -30522..=30521 (rows of `word_embeddings` (Gather))"
    );
    let ok = i64_tensor(&[2, 8], &[30521; 16]);
    assert!(check_indices(&ranges, &[("input_ids", &ok)]).is_ok());
}

#[test]
fn negative_ids_pass_only_where_the_operator_counts_them_from_the_end() {
    let gather = gather_range(29, "rows of `t` (Gather)");
    let embed = IndexRange { allow_negative: false, ..gather.clone() };
    let ranges = BTreeMap::from([("g".to_string(), gather), ("e".to_string(), embed)]);
    let check = |name: &str, v: i64| check_indices(&ranges, &[(name, &i64_tensor(&[1], &[v]))]).is_ok();
    assert!(check("g", -30) && !check("g", -31) && check("g", 29) && !check("g", 30));
    assert!(check("e", 0) && !check("e", -1) && !check("e", 30));
    let err = check_indices(&ranges, &[("e", &i64_tensor(&[3], &[0, 1, -1]))]).unwrap_err().to_string();
    assert!(err.contains("value -1 at [2] is outside 0..=29"), "{err}");
}

#[test]
fn every_integer_type_is_checked_and_other_inputs_pass() {
    let ranges = BTreeMap::from([("ids".to_string(), gather_range(9, "rows of `t` (Gather)"))]);
    let refused = |t: Tensor| check_indices(&ranges, &[("ids", &t)]).is_err();
    assert!(refused(Tensor::from_shape::<i32>(&[2], &[1, 10]).unwrap()));
    assert!(refused(Tensor::from_shape::<u8>(&[2], &[1, 200]).unwrap()));
    assert!(refused(Tensor::from_shape::<u64>(&[1], &[u64::MAX]).unwrap()));
    assert!(refused(Tensor::from_shape::<i8>(&[1], &[-11]).unwrap()));
    assert!(!refused(Tensor::from_shape::<u16>(&[3], &[0, 5, 9]).unwrap()));
    // Wrong types are `check_inputs`' business; unknown inputs have no range.
    assert!(!refused(Tensor::from_shape::<f32>(&[1], &[1e9]).unwrap()));
    assert!(check_indices(&ranges, &[("other", &i64_tensor(&[1], &[1 << 40]))]).is_ok());
    assert!(!refused(i64_tensor(&[0, 3], &[])));
}

/// Not a timing assertion (the machine is shared): prints the cost of the scan for the record.
#[test]
fn checking_512_ids_is_a_linear_scan() {
    let ranges = BTreeMap::from([("ids".to_string(), gather_range(30521, "rows of `w` (Gather)"))]);
    let data: Vec<i64> = (0..512).map(|i| (i * 59) % 30522).collect();
    let t = i64_tensor(&[1, 512], &data);
    let rounds = 20_000u32;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        check_indices(std::hint::black_box(&ranges), &[("ids", std::hint::black_box(&t))]).unwrap();
    }
    eprintln!("check_indices on 512 int64: {:?} per call", started.elapsed() / rounds);
}

fn load(onnx: &[u8]) -> TractEngine {
    TractEngine::load(onnx, &EngineOptions { model_name: "bert-like".into(), ..Default::default() }).unwrap()
}

#[test]
fn generated_inputs_for_the_bert_fixture_are_in_range_and_run_on_tract() {
    let onnx = bert_like();
    let ranges = index_ranges(&onnx);
    let engine = load(&onnx);
    let mut session = engine.session().unwrap();
    let shape = |s: &IoSpec| s.shape.iter().map(|d| d.unwrap_or(16)).collect::<Vec<_>>();
    for seed in 0..8 {
        let inputs = generate_inputs_in(engine.inputs(), &shape, &ranges, seed).unwrap();
        let named: Vec<(&str, &Tensor)> = engine.inputs().iter().map(|s| s.name.as_str()).zip(&inputs).collect();
        check_indices(&ranges, &named).unwrap();
        let out = session.run(inputs).unwrap();
        assert_eq!(out[0].shape(), &[16, 16, 8]);
    }
    let ones = generate_inputs(engine.inputs(), &ranges, 1).unwrap();
    assert!(session.run(ones).is_ok());
}

/// The reason for all of the above: tract indexes the table unchecked.
#[test]
fn a_token_type_past_the_table_is_refused_where_tract_would_panic() {
    let onnx = bert_like();
    let ranges = index_ranges(&onnx);
    let engine = load(&onnx);
    let ids = i64_tensor(&[1, 4], &[1, 2, 3, 4]);
    let types = i64_tensor(&[1, 4], &[0, 1, 5, 0]);
    let mask = i64_tensor(&[1, 4], &[1; 4]);
    let inputs = [("input_ids", &ids), ("token_type_ids", &types), ("attention_mask", &mask)];
    let err = check_indices(&ranges, &inputs).unwrap_err().to_string();
    assert!(err.contains("`token_type_ids`: value 5 at [0, 2] is outside -2..=1"), "{err}");
    let mut session = engine.session().unwrap();
    let run = fenced(|| session.run(vec![ids, types, mask]).map(drop).map_err(|e| e.to_string()));
    assert!(run.is_err(), "tract no longer fails on an out-of-range Gather index: check_indices may be relaxed");
}

/// `bench` finds the ranges itself: with integers in [0, 10) as before, tract panicked on the
/// two-row token-type table and the measurement was an error.
#[test]
fn bench_of_the_bert_fixture_measures_instead_of_failing() {
    use crate::backend::BackendKind;
    use crate::bench::{bench, BenchConfig};
    let cfg = BenchConfig {
        backends: vec![BackendKind::Tract],
        warmup: 1,
        iterations: 3,
        symbols: BTreeMap::from([("batch".to_string(), 2), ("sequence".to_string(), 12)]),
        ..BenchConfig::default()
    };
    let r = &bench(&bert_like(), &cfg)[0];
    assert!(r.error.is_none() && r.latency.is_some(), "{r:?}");
}
