//! Tree ensembles and SVMs on one-node graphs, against values worked out by hand.
//!
//! Most tree tests use two trees over two features: tree 0 sends `x0 <= 0.5` to node 1, else
//! node 2; tree 1 sends `x1 >= 0` (or a missing `x1`) to node 1, else node 2. The rows `[0, 1]`,
//! `[1, -1]` and `[NaN, NaN]` then reach leaves (1, 1), (2, 2) and (2, 1).

use super::test_graph::{assert_close, attr, floats, out_f32, out_i64, out_str, run, A};
use super::transform::logistic;
use tract_onnx::pb::AttributeProto;
use tract_onnx::prelude::*;

fn rows() -> Tensor {
    floats(&[3, 2], &[0.0, 1.0, 1.0, -1.0, f32::NAN, f32::NAN])
}

fn two_trees() -> Vec<AttributeProto> {
    vec![
        attr("nodes_treeids", A::Ints(&[0, 0, 0, 1, 1, 1])),
        attr("nodes_nodeids", A::Ints(&[0, 1, 2, 0, 1, 2])),
        attr("nodes_featureids", A::Ints(&[0, 0, 0, 1, 0, 0])),
        attr("nodes_modes", A::Strs(&["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_GTE", "LEAF", "LEAF"])),
        attr("nodes_values", A::Floats(&[0.5, 0.0, 0.0, 0.0, 0.0, 0.0])),
        attr("nodes_truenodeids", A::Ints(&[1, 0, 0, 1, 0, 0])),
        attr("nodes_falsenodeids", A::Ints(&[2, 0, 0, 2, 0, 0])),
        attr("nodes_missing_value_tracks_true", A::Ints(&[0, 0, 0, 1, 0, 0])),
    ]
}

/// Leaf weights: (tree, node, target or class, weight).
fn leaves(prefix: &str, weights: &[(i64, i64, i64, f32)]) -> Vec<AttributeProto> {
    let col = |f: fn(&(i64, i64, i64, f32)) -> i64| weights.iter().map(f).collect::<Vec<i64>>();
    let w: Vec<f32> = weights.iter().map(|w| w.3).collect();
    vec![
        attr(&format!("{prefix}_treeids"), A::Ints(&col(|w| w.0))),
        attr(&format!("{prefix}_nodeids"), A::Ints(&col(|w| w.1))),
        attr(&format!("{prefix}_ids"), A::Ints(&col(|w| w.2))),
        attr(&format!("{prefix}_weights"), A::Floats(&w)),
    ]
}

fn regress(aggregate: &str, extra: Vec<AttributeProto>) -> Vec<f32> {
    let mut attrs = two_trees();
    attrs.extend(leaves("target", &[(0, 1, 0, 1.0), (0, 2, 0, 2.0), (1, 1, 0, 10.0), (1, 2, 0, 20.0)]));
    attrs.push(attr("aggregate_function", A::Str(aggregate)));
    attrs.extend(extra);
    let y = run("TreeEnsembleRegressor", attrs, vec![("X", rows())], 1).unwrap();
    assert_eq!(y[0].shape(), &[3, 1]);
    out_f32(&y[0])
}

#[test]
fn tree_regressor_sums_the_leaves_reached_and_adds_the_base_value() {
    assert_eq!(regress("SUM", vec![attr("base_values", A::Floats(&[0.5]))]), [11.5, 22.5, 12.5]);
}

#[test]
fn tree_regressor_averages_takes_the_min_or_the_max_of_the_leaves() {
    assert_eq!(regress("AVERAGE", vec![]), [5.5, 11.0, 6.0]);
    assert_eq!(regress("MIN", vec![]), [1.0, 2.0, 2.0]);
    assert_eq!(regress("MAX", vec![]), [10.0, 20.0, 10.0]);
}

#[test]
fn tree_regressor_adds_base_values_per_target_and_a_target_no_leaf_reaches_reads_zero() {
    let mut attrs = two_trees();
    attrs.extend(leaves("target", &[(0, 1, 0, 1.0), (0, 1, 1, -1.0), (0, 2, 0, 2.0), (1, 1, 1, 3.0), (1, 2, 0, 4.0)]));
    attrs.push(attr("n_targets", A::Int(2)));
    attrs.push(attr("base_values", A::Floats(&[100.0, 200.0])));
    let y = run("TreeEnsembleRegressor", attrs, vec![("X", rows())], 1).unwrap();
    assert_eq!(y[0].shape(), &[3, 2]);
    // Row 1 gives target 1 no weight: onnxruntime answers 0 there, not the base value.
    assert_eq!(out_f32(&y[0]), [101.0, 202.0, 106.0, 0.0, 102.0, 203.0]);
}

#[test]
fn tree_regressor_refuses_a_loop_and_a_missing_child_instead_of_hanging_or_panicking() {
    // Node 2 of tree 1 becomes a branch whose false side goes back to the root.
    let mut looping = two_trees();
    looping.retain(|a| !["nodes_modes", "nodes_truenodeids"].contains(&a.name.as_str()));
    looping.push(attr("nodes_modes", A::Strs(&["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_GTE", "LEAF", "BRANCH_LT"])));
    looping.push(attr("nodes_truenodeids", A::Ints(&[1, 0, 0, 1, 0, 1])));
    looping.extend(leaves("target", &[(0, 1, 0, 1.0), (0, 2, 0, 2.0), (1, 1, 0, 10.0)]));
    let err = run("TreeEnsembleRegressor", looping, vec![("X", rows())], 1).unwrap_err();
    assert!(format!("{err:#}").contains("loops back"), "{err:#}");

    let mut missing = two_trees();
    missing.retain(|a| a.name != "nodes_truenodeids");
    missing.push(attr("nodes_truenodeids", A::Ints(&[7, 0, 0, 1, 0, 0])));
    missing.extend(leaves("target", &[(0, 1, 0, 1.0), (0, 2, 0, 2.0), (1, 1, 0, 10.0), (1, 2, 0, 20.0)]));
    let err = run("TreeEnsembleRegressor", missing, vec![("X", rows())], 1).unwrap_err();
    assert!(format!("{err:#}").contains("tree 0 has no node 7"), "{err:#}");
}

#[test]
fn tree_regressor_refuses_rows_narrower_than_the_features_it_reads() {
    let mut attrs = two_trees();
    attrs.extend(leaves("target", &[(0, 1, 0, 1.0), (0, 2, 0, 2.0), (1, 1, 0, 10.0), (1, 2, 0, 20.0)]));
    let err = run("TreeEnsembleRegressor", attrs, vec![("X", floats(&[1, 1], &[0.0]))], 1).unwrap_err();
    assert!(format!("{err:#}").contains("read feature 1 but the input has 1 features"), "{err:#}");
}

fn classify(labels: AttributeProto, weights: &[(i64, i64, i64, f32)], extra: Vec<AttributeProto>) -> Vec<Tensor> {
    let mut attrs = two_trees();
    attrs.extend(leaves("class", weights));
    attrs.push(labels);
    attrs.extend(extra);
    run("TreeEnsembleClassifier", attrs, vec![("X", rows())], 2).unwrap()
}

#[test]
fn binary_gradient_boosting_scores_one_margin_and_derives_both_probabilities() {
    // skl2onnx's GradientBoostingClassifier: weights for class id 0 only, one base value.
    let y = classify(
        attr("classlabels_int64s", A::Ints(&[0, 1])),
        &[(0, 1, 0, 0.5), (0, 2, 0, -0.5), (1, 1, 0, 1.0), (1, 2, 0, -1.0)],
        vec![attr("base_values", A::Floats(&[0.25])), attr("post_transform", A::Str("LOGISTIC"))],
    );
    let margins = [1.75f32, -1.25, 0.75];
    assert_eq!(out_i64(&y[0]), [1, 0, 1]);
    let want: Vec<f32> = margins.iter().flat_map(|m| [logistic(-m), logistic(*m)]).collect();
    assert_close(&out_f32(&y[1]), &want);
}

#[test]
fn binary_forest_with_positive_weights_reads_its_score_as_the_probability_of_class_one() {
    let y = classify(
        attr("classlabels_int64s", A::Ints(&[0, 1])),
        &[(0, 1, 0, 0.3), (0, 2, 0, 0.1), (1, 1, 0, 0.4), (1, 2, 0, 0.0)],
        vec![],
    );
    assert_eq!(out_i64(&y[0]), [1, 0, 0]);
    assert_close(&out_f32(&y[1]), &[0.3, 0.7, 0.9, 0.1, 0.5, 0.5]);
}

#[test]
fn multiclass_forest_adds_base_values_picks_the_best_class_and_applies_softmax() {
    let y = classify(
        attr("classlabels_strings", A::Strs(&["a", "b", "c"])),
        &[(0, 1, 0, 1.0), (0, 2, 1, 1.0), (1, 1, 1, 2.0), (1, 2, 2, 0.5)],
        vec![attr("base_values", A::Floats(&[0.0, 0.0, 1.0])), attr("post_transform", A::Str("SOFTMAX"))],
    );
    assert_eq!(out_str(&y[0]), ["b", "c", "b"]);
    let softmax = |v: [f32; 3]| {
        let e = v.map(f32::exp);
        let s: f32 = e.iter().sum();
        e.map(|x| x / s)
    };
    let want: Vec<f32> = [[1.0, 2.0, 1.0], [0.0, 1.0, 1.5], [0.0, 3.0, 1.0]].into_iter().flat_map(softmax).collect();
    assert_close(&out_f32(&y[1]), &want);
}

#[test]
fn two_class_forest_weighting_both_classes_labels_as_onnxruntime_does() {
    // With weights for both classes and no base value, onnxruntime's label is the integer 1 when
    // class 1 scores above zero, whatever the labels are: kept so both backends agree.
    let y = classify(
        attr("classlabels_int64s", A::Ints(&[3, 7])),
        &[(0, 1, 0, 0.6), (0, 1, 1, 0.4), (0, 2, 0, 0.2), (0, 2, 1, 0.8), (1, 1, 0, 1.0), (1, 2, 1, 1.0)],
        vec![],
    );
    assert_eq!(out_i64(&y[0]), [1, 1, 1]);
    assert_close(&out_f32(&y[1]), &[1.6, 0.4, 0.2, 1.8, 1.2, 0.8]);
}

#[test]
fn tree_ensemble_of_opset_5_walks_leaf_arrays_and_member_sets() {
    let attrs = vec![
        attr("n_targets", A::Int(1)),
        attr("tree_roots", A::Ints(&[0])),
        attr("nodes_featureids", A::Ints(&[0, 1])),
        attr("nodes_modes", A::ByteTensor(&[0, 6])),
        attr("nodes_splits", A::FloatTensor(&[0.5, 0.0])),
        attr("nodes_truenodeids", A::Ints(&[0, 1])),
        attr("nodes_trueleafs", A::Ints(&[1, 1])),
        attr("nodes_falsenodeids", A::Ints(&[1, 2])),
        attr("nodes_falseleafs", A::Ints(&[0, 1])),
        attr("leaf_targetids", A::Ints(&[0, 0, 0])),
        attr("leaf_weights", A::FloatTensor(&[1.0, 2.0, 3.0])),
        attr("membership_values", A::FloatTensor(&[1.0, 3.0])),
    ];
    let x = floats(&[4, 2], &[0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 1.0, 1.0]);
    let y = run("TreeEnsemble", attrs, vec![("X", x)], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [1.0, 2.0, 3.0, 2.0]);
}

fn svc(extra: Vec<AttributeProto>) -> Vec<Tensor> {
    let mut attrs = vec![
        attr("classlabels_ints", A::Ints(&[0, 1])),
        attr("vectors_per_class", A::Ints(&[1, 1])),
        attr("support_vectors", A::Floats(&[1.0, 0.0, 0.0, 1.0])),
        attr("coefficients", A::Floats(&[0.5, -0.5])),
        attr("rho", A::Floats(&[0.2])),
        attr("kernel_type", A::Str("LINEAR")),
        attr("kernel_params", A::Floats(&[0.0, 0.0, 0.0])),
    ];
    attrs.extend(extra);
    run("SVMClassifier", attrs, vec![("X", floats(&[2, 2], &[2.0, 1.0, 0.0, 3.0]))], 2).unwrap()
}

#[test]
fn two_class_svc_votes_by_the_sign_of_its_decision_value() {
    // Decision values: 0.5·2 − 0.5·1 + 0.2 = 0.7 (class 0 wins) and −0.5·3 + 0.2 = −1.3.
    let y = svc(vec![]);
    assert_eq!(out_i64(&y[0]), [0, 1]);
    assert_close(&out_f32(&y[1]), &[-0.7, 0.7, 1.3, -1.3]);
}

#[test]
fn two_class_svc_with_platt_scaling_returns_the_pair_probability() {
    // P(class 0) = 1 − logistic(d·A + B), which pairwise coupling leaves as it is for two classes.
    let y = svc(vec![attr("prob_a", A::Floats(&[-2.0])), attr("prob_b", A::Floats(&[0.1]))]);
    assert_eq!(out_i64(&y[0]), [0, 1]);
    let p: Vec<f32> = [0.7f32, -1.3].iter().map(|d| 1.0 - logistic(d * -2.0 + 0.1)).collect();
    let got = out_f32(&y[1]);
    for (row, p) in got.chunks(2).zip(p) {
        assert!((row[0] - p).abs() < 2e-3 && (row[0] + row[1] - 1.0).abs() < 1e-6, "{got:?} vs {p}");
    }
}

#[test]
fn linear_svc_scores_each_class_and_applies_the_post_transform() {
    let attrs = vec![
        attr("classlabels_ints", A::Ints(&[4, 5, 6])),
        attr("coefficients", A::Floats(&[1.0, 0.0, 0.0, 1.0, -1.0, -1.0])),
        attr("rho", A::Floats(&[0.5])),
        attr("post_transform", A::Str("SOFTMAX")),
    ];
    let y = run("SVMClassifier", attrs, vec![("X", floats(&[2, 2], &[2.0, 1.0, 0.0, 3.0]))], 2).unwrap();
    assert_eq!(out_i64(&y[0]), [4, 5]);
    let softmax = |v: [f32; 3]| {
        let e = v.map(f32::exp);
        let s: f32 = e.iter().sum();
        e.map(|x| x / s)
    };
    let want: Vec<f32> = [[2.5, 1.5, -2.5], [0.5, 3.5, -2.5]].into_iter().flat_map(softmax).collect();
    assert_close(&out_f32(&y[1]), &want);
}

#[test]
fn svm_regressor_sums_kernels_and_one_class_returns_the_side() {
    let linear = |one_class| {
        let attrs = vec![
            attr("coefficients", A::Floats(&[2.0, -1.0])),
            attr("rho", A::Floats(&[0.5])),
            attr("one_class", A::Int(one_class)),
        ];
        out_f32(&run("SVMRegressor", attrs, vec![("X", floats(&[2, 2], &[1.0, 1.0, 0.0, 2.0]))], 1).unwrap()[0])
    };
    assert_eq!(linear(0), [1.5, -1.5]);
    assert_eq!(linear(1), [1.0, -1.0]);
    let attrs = vec![
        attr("n_supports", A::Int(2)),
        attr("support_vectors", A::Floats(&[0.0, 0.0, 1.0, 1.0])),
        attr("coefficients", A::Floats(&[1.0, -2.0])),
        attr("rho", A::Floats(&[0.1])),
        attr("kernel_type", A::Str("RBF")),
        attr("kernel_params", A::Floats(&[0.5, 0.0, 3.0])),
    ];
    let y = run("SVMRegressor", attrs, vec![("X", floats(&[1, 2], &[1.0, 0.0]))], 1).unwrap();
    // Both vectors are at squared distance 1: e^-0.5 − 2·e^-0.5 + 0.1.
    assert_close(&out_f32(&y[0]), &[0.1 - (-0.5f32).exp()]);
}

#[test]
fn svm_regressor_refuses_rows_of_the_wrong_width() {
    let attrs = vec![attr("coefficients", A::Floats(&[2.0, -1.0])), attr("rho", A::Floats(&[0.5]))];
    let err = run("SVMRegressor", attrs, vec![("X", floats(&[1, 3], &[1.0, 1.0, 1.0]))], 1).unwrap_err();
    assert!(format!("{err:#}").contains("trained on 2 features, the input has 3"), "{err:#}");
}
