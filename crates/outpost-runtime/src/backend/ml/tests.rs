//! The preprocessing, feature and encoder operators on one-node graphs, against values worked
//! out by hand from the ONNX-ML spec.

use super::test_graph::{assert_close, attr, floats, out_f32, out_i64, out_str, run, A};
use tract_onnx::prelude::*;

fn strings(shape: &[usize], data: &[&str]) -> Tensor {
    let v: Vec<String> = data.iter().map(|s| s.to_string()).collect();
    tract_ndarray::ArrayD::from_shape_vec(shape, v).unwrap().into_tensor()
}

fn ints(shape: &[usize], data: &[i64]) -> Tensor {
    Tensor::from_shape(shape, data).unwrap()
}

#[test]
fn scaler_subtracts_the_offset_then_multiplies_by_the_scale_of_each_feature() {
    let x = floats(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let attrs = vec![attr("offset", A::Floats(&[1.0, 0.5])), attr("scale", A::Floats(&[2.0, -1.0]))];
    let y = run("Scaler", attrs, vec![("X", x.clone())], 1).unwrap();
    assert_eq!(y[0].shape(), &[2, 2]);
    assert_close(&out_f32(&y[0]), &[0.0, -1.5, 4.0, -3.5]);

    let attrs = vec![attr("offset", A::Floats(&[1.0])), attr("scale", A::Floats(&[0.5]))];
    let y = run("Scaler", attrs, vec![("X", x)], 1).unwrap();
    assert_close(&out_f32(&y[0]), &[0.0, 0.5, 1.0, 1.5]);
}

#[test]
fn scaler_turns_integer_features_into_floats() {
    let attrs = vec![attr("offset", A::Floats(&[1.0, 0.0])), attr("scale", A::Floats(&[3.0, 0.25]))];
    let y = run("Scaler", attrs, vec![("X", ints(&[1, 2], &[1, 2]))], 1).unwrap();
    assert_eq!(y[0].datum_type(), DatumType::F32);
    assert_close(&out_f32(&y[0]), &[0.0, 0.5]);
}

#[test]
fn scaler_with_a_list_that_fits_no_feature_count_names_the_node() {
    let attrs = vec![attr("offset", A::Floats(&[0.0; 3])), attr("scale", A::Floats(&[1.0; 3]))];
    let err = run("Scaler", attrs, vec![("X", floats(&[1, 2], &[1.0, 2.0]))], 1).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("the_scaler") && msg.contains("3 values") && msg.contains("2 features"), "{msg}");
    let attrs = vec![attr("offset", A::Floats(&[0.0])), attr("scale", A::Floats(&[1.0, 2.0]))];
    let err = run("Scaler", attrs, vec![("X", floats(&[1, 2], &[1.0, 2.0]))], 1).unwrap_err();
    assert!(format!("{err:#}").contains("same, non-zero length"), "{err:#}");
}

#[test]
fn binarizer_maps_values_above_the_threshold_to_one_keeping_the_type() {
    let x = floats(&[1, 4], &[-1.0, 0.1, 0.5, f32::NAN]);
    let y = run("Binarizer", vec![attr("threshold", A::Float(0.1))], vec![("X", x)], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [0.0, 0.0, 1.0, 0.0]);
    let y =
        run("Binarizer", vec![attr("threshold", A::Float(1.0))], vec![("X", ints(&[1, 3], &[0, 1, 2]))], 1).unwrap();
    assert_eq!(out_i64(&y[0]), [0, 0, 1]);
    // The threshold defaults to 0.
    let y = run("Binarizer", vec![], vec![("X", floats(&[1, 3], &[-1.0, 0.5, 0.0]))], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [0.0, 1.0, 0.0]);
}

#[test]
fn imputer_replaces_nan_with_the_value_of_each_feature() {
    let x = floats(&[2, 3], &[f32::NAN, 1.0, 2.0, 3.0, f32::NAN, f32::NAN]);
    let attrs = vec![
        attr("imputed_value_floats", A::Floats(&[10.0, 20.0, 30.0])),
        attr("replaced_value_float", A::Float(f32::NAN)),
    ];
    let y = run("Imputer", attrs, vec![("X", x)], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [10.0, 1.0, 2.0, 3.0, 20.0, 30.0]);
}

#[test]
fn imputer_replaces_an_exact_value_and_leaves_nan_alone_otherwise() {
    let attrs = vec![attr("imputed_value_floats", A::Floats(&[9.0])), attr("replaced_value_float", A::Float(1.0))];
    let y = run("Imputer", attrs, vec![("X", floats(&[1, 3], &[1.0, f32::NAN, 2.0]))], 1).unwrap();
    let y = out_f32(&y[0]);
    assert!(y[0] == 9.0 && y[1].is_nan() && y[2] == 2.0, "{y:?}");
    let attrs = vec![attr("imputed_value_int64s", A::Ints(&[7])), attr("replaced_value_int64", A::Int(0))];
    let y = run("Imputer", attrs, vec![("X", ints(&[1, 3], &[0, 5, 0]))], 1).unwrap();
    assert_eq!(out_i64(&y[0]), [7, 5, 7]);
}

#[test]
fn imputer_of_floats_refuses_integer_input() {
    let attrs = vec![attr("imputed_value_floats", A::Floats(&[9.0]))];
    let err = run("Imputer", attrs, vec![("X", ints(&[1, 2], &[1, 2]))], 1).unwrap_err();
    assert!(format!("{err:#}").contains("feed float32"), "{err:#}");
}

#[test]
fn array_feature_extractor_picks_columns_of_the_last_axis() {
    let x = floats(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let y = run("ArrayFeatureExtractor", vec![], vec![("X", x), ("const:Y", ints(&[2], &[2, 0]))], 1).unwrap();
    assert_eq!(y[0].shape(), &[2, 2]);
    assert_eq!(out_f32(&y[0]), [3.0, 1.0, 6.0, 4.0]);
    // A vector is one row.
    let y = run(
        "ArrayFeatureExtractor",
        vec![],
        vec![("X", floats(&[3], &[7.0, 8.0, 9.0])), ("const:Y", ints(&[1], &[1]))],
        1,
    )
    .unwrap();
    assert_eq!((y[0].shape(), out_f32(&y[0])), (&[1, 1][..], vec![8.0]));
    let labels = strings(&[1, 3], &["a", "b", "c"]);
    let y = run("ArrayFeatureExtractor", vec![], vec![("X", labels), ("const:Y", ints(&[1], &[2]))], 1).unwrap();
    assert_eq!(out_str(&y[0]), ["c"]);
}

#[test]
fn array_feature_extractor_refuses_a_column_past_the_end() {
    let x = floats(&[1, 3], &[1.0, 2.0, 3.0]);
    let err = run("ArrayFeatureExtractor", vec![], vec![("X", x), ("const:Y", ints(&[1], &[3]))], 1).unwrap_err();
    assert!(format!("{err:#}").contains("column 3 but X has 3 columns"), "{err:#}");
}

#[test]
fn feature_vectorizer_concatenates_rows_truncating_and_padding_each_input() {
    let a = floats(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = ints(&[2, 3], &[5, 6, 7, 8, 9, 10]);
    let y = run(
        "FeatureVectorizer",
        vec![attr("inputdimensions", A::Ints(&[2, 2]))],
        vec![("A", a.clone()), ("B", b.clone())],
        1,
    )
    .unwrap();
    assert_eq!(y[0].shape(), &[2, 4]);
    assert_eq!(out_f32(&y[0]), [1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 8.0, 9.0]);
    let y =
        run("FeatureVectorizer", vec![attr("inputdimensions", A::Ints(&[3, 1]))], vec![("A", a), ("B", b)], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [1.0, 2.0, 0.0, 5.0, 3.0, 4.0, 0.0, 8.0]);
}

#[test]
fn one_hot_encoder_appends_an_axis_of_categories() {
    let attrs = vec![attr("cats_int64s", A::Ints(&[1, 2, 3]))];
    let y = run("OneHotEncoder", attrs, vec![("X", ints(&[2, 1], &[2, 7]))], 1).unwrap();
    assert_eq!(y[0].shape(), &[2, 1, 3]);
    assert_eq!(out_f32(&y[0]), [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let attrs = vec![attr("cats_strings", A::Strs(&["a", "b"]))];
    let y = run("OneHotEncoder", attrs, vec![("X", strings(&[2], &["b", "a"]))], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [0.0, 1.0, 1.0, 0.0]);
    // Floats are truncated to integers first.
    let attrs = vec![attr("cats_int64s", A::Ints(&[1, 2]))];
    let y = run("OneHotEncoder", attrs, vec![("X", floats(&[1, 1], &[1.9]))], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [1.0, 0.0]);
}

#[test]
fn one_hot_encoder_without_zeros_refuses_an_unknown_category() {
    let attrs = vec![attr("cats_int64s", A::Ints(&[1, 2])), attr("zeros", A::Int(0))];
    let err = run("OneHotEncoder", attrs, vec![("X", ints(&[1, 2], &[1, 5]))], 1).unwrap_err();
    assert!(format!("{err:#}").contains("element 1 is not a known category"), "{err:#}");
}

#[test]
fn label_encoder_maps_keys_to_values_and_others_to_the_default() {
    let attrs = vec![
        attr("keys_int64s", A::Ints(&[3, 8])),
        attr("values_floats", A::Floats(&[0.5, 2.5])),
        attr("default_float", A::Float(9.0)),
    ];
    let y = run("LabelEncoder", attrs, vec![("X", ints(&[1, 3], &[8, 3, 4]))], 1).unwrap();
    assert_eq!(out_f32(&y[0]), [2.5, 0.5, 9.0]);
    let attrs = vec![attr("keys_strings", A::Strs(&["a", "b"])), attr("values_int64s", A::Ints(&[1, 2]))];
    let y = run("LabelEncoder", attrs, vec![("X", strings(&[2], &["b", "z"]))], 1).unwrap();
    assert_eq!(out_i64(&y[0]), [2, -1]);
    let attrs = vec![attr("keys_floats", A::Floats(&[0.0, 1.5])), attr("values_strings", A::Strs(&["zero", "x"]))];
    let y = run("LabelEncoder", attrs, vec![("X", floats(&[3], &[-0.0, 1.5, 2.0]))], 1).unwrap();
    assert_eq!(out_str(&y[0]), ["zero", "x", "_Unused"]);
}

#[test]
fn label_encoder_of_opset_1_reads_its_classes_both_ways() {
    let attrs = || vec![attr("classes_strings", A::Strs(&["x", "y"]))];
    let y = run("LabelEncoder", attrs(), vec![("X", strings(&[2], &["y", "q"]))], 1).unwrap();
    assert_eq!(out_i64(&y[0]), [1, -1]);
    let y = run("LabelEncoder", attrs(), vec![("X", ints(&[2], &[0, 5]))], 1).unwrap();
    assert_eq!(out_str(&y[0]), ["x", "_Unused"]);
}

#[test]
fn label_encoder_with_unpaired_keys_is_refused_when_parsed() {
    let attrs = vec![attr("keys_int64s", A::Ints(&[1, 2])), attr("values_int64s", A::Ints(&[1]))];
    let err = run("LabelEncoder", attrs, vec![("X", ints(&[1], &[1]))], 1).unwrap_err();
    assert!(format!("{err:#}").contains("2 keys but 1 values"), "{err:#}");
}
