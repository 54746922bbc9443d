//! The vibration anomaly detector: train on normal windows, export ONNX, measure the export.
//!
//! The graph is `window [batch,3,256] -> Hann -> DFT (two MatMuls) -> power -> frequency
//! smoothing (MatMul) -> log amplitude -> standardise -> PCA coordinates -> (reconstruction
//! residual squared, whitened coordinates squared) -> weighted sum / calibration -> score
//! [batch]`. Everything is plain arithmetic (MatMul, Mul, Add, Sub, Div, Sqrt, Log, Reshape,
//! ReduceSum) that both tract and onnxruntime run, so the package works on either backend.
//!
//! Training follows how such a detector is commissioned on a real machine: fit on healthy data
//! only, pick the alarm threshold on a *separate* healthy set at a false-alarm budget, and judge
//! it on held-out data with every fault at severities from barely-there to obvious.

use crate::artifact::ArtifactScorer;
use crate::golden::selftest;
use crate::metrics::{rate_above, roc_auc, threshold_at_fpr};
use crate::onnx::{attr_int, encode, GraphBuilder};
use crate::pca::{quantile, SpectralPca, CALIBRATION_QUANTILE};
use crate::spectrum::{dft_matrices, hann, log_spectra, smoothing_matrix, BINS, FEATURES, POWER_FLOOR};
use crate::synth::{Condition, VibrationSource, CHANNELS, SAMPLE_RATE, WINDOW};
use crate::TrainError;
use outpost_proto::manifest::{
    AnomalyPost, Dim, Manifest, ModelInfo, PostProcess, PreProcess, ReferenceStats, Scaling, SelfTestRef, SensorLayout,
    SensorPre, Task, TensorSpec, TensorStats, FORMAT_VERSION,
};
use outpost_proto::DType;
use std::collections::BTreeMap;

/// Name of the model in its manifest.
pub const MODEL_NAME: &str = "vibration-anomaly";
/// Name of the graph input.
pub const INPUT: &str = "window";
/// Name of the graph output.
pub const OUTPUT: &str = "score";
/// The symbolic batch dimension.
pub const BATCH: &str = "batch";
/// File name of the self-test vectors inside a package.
pub const SELFTEST_FILE: &str = "selftest.json";

/// Quantiles recorded for the score in the manifest's reference statistics.
const SCORE_QUANTILES: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];
/// Lowest and highest fault severity in the held-out evaluation.
const SEVERITY_RANGE: (f32, f32) = (0.1, 1.0);
/// Graph and fitted model must agree this closely (relative, with an absolute floor of the same
/// size); float32 in the graph against float64 in the fit leaves about 1e-5.
const AGREEMENT: f64 = 1e-3;

/// Independent random streams derived from the configured seed, so training, validation, test
/// and self-test data never share windows.
#[derive(Clone, Copy)]
enum Stream {
    Train = 1,
    Validation = 2,
    Test = 3,
    SelfTest = 4,
}

fn stream_seed(seed: u64, stream: Stream) -> u64 {
    // SplitMix64 finaliser: nearby seeds give unrelated streams.
    let mut z = seed.wrapping_add((stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How to train and evaluate the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Seed for every random stream; the same seed gives byte-identical models.
    pub seed: u64,
    /// Normal windows to fit on; half as many more normal windows pick the threshold.
    pub train_windows: usize,
    /// Held-out windows per condition (normal and each fault) for the evaluation.
    pub test_windows_per_condition: usize,
    /// Fraction of the standardised spectral variance the kept components must explain.
    pub variance_kept: f64,
    /// Upper bound on kept components, whatever `variance_kept` asks for.
    pub max_components: usize,
    /// Share of normal validation windows allowed above the threshold (false-alarm budget).
    pub target_fpr: f64,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            seed: 20_240_917,
            train_windows: 4000,
            test_windows_per_condition: 500,
            variance_kept: 0.95,
            max_components: 24,
            target_fpr: 0.01,
        }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), TrainError> {
        let bad = |field, reason: String| Err(TrainError::Config { field, reason });
        if self.train_windows < 200 {
            return bad("train_windows", format!("{} is too few; use at least 200", self.train_windows));
        }
        if self.test_windows_per_condition == 0 {
            return bad("test_windows_per_condition", "must be at least 1".into());
        }
        if !(self.variance_kept > 0.0 && self.variance_kept <= 1.0) {
            return bad("variance_kept", format!("{} is not in (0, 1]", self.variance_kept));
        }
        if self.max_components == 0 || self.max_components >= FEATURES {
            return bad("max_components", format!("{} is not in 1..{FEATURES}", self.max_components));
        }
        if !(0.0..0.5).contains(&self.target_fpr) {
            return bad("target_fpr", format!("{} is not in [0, 0.5)", self.target_fpr));
        }
        Ok(())
    }

    fn validation_windows(&self) -> usize {
        self.train_windows / 2
    }
}

/// How well the exported model separates faults from normal windows on held-out data.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// ROC-AUC of all faults (all severities) against normal windows.
    pub roc_auc: f64,
    /// Score above which a window is anomalous (picked on validation data at the target FPR).
    pub threshold: f32,
    /// Share of fault windows above the threshold.
    pub tpr: f64,
    /// Share of held-out normal windows above the threshold.
    pub fpr: f64,
    /// Per fault: name, ROC-AUC against normal, detection rate at the threshold.
    pub per_condition: Vec<(String, f64, f64)>,
    /// Principal components kept.
    pub components: usize,
    /// Normal windows the model was fitted on.
    pub train_windows: usize,
    /// Held-out windows evaluated (normal and faults).
    pub test_windows: usize,
}

/// A trained, exported and measured model, ready for the packager.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// The ONNX model bytes.
    pub onnx: Vec<u8>,
    /// The package manifest, with `files` left empty for the packager to fill.
    pub manifest: Manifest,
    /// Golden self-test vectors, computed by tract from `onnx`.
    pub selftest: outpost_proto::manifest::SelfTest,
    /// Held-out quality of `onnx`.
    pub evaluation: Evaluation,
}

/// Trains the vibration anomaly detector on synthetic normal data and exports it as ONNX.
pub fn train_vibration_anomaly(cfg: &TrainConfig) -> Result<TrainedModel, TrainError> {
    cfg.check()?;
    let train = normal_windows(stream_seed(cfg.seed, Stream::Train), cfg.train_windows);
    let pca = SpectralPca::fit(&log_spectra(&train), cfg.variance_kept, cfg.max_components)?;
    let onnx = export(&pca)?;
    let scorer = ArtifactScorer::load(&onnx, None)?;

    let validation = normal_windows(stream_seed(cfg.seed, Stream::Validation), cfg.validation_windows());
    let validation_scores = scorer.scores(&validation)?;
    let threshold = threshold_at_fpr(&validation_scores, cfg.target_fpr);

    let test = TestSet::generate(stream_seed(cfg.seed, Stream::Test), cfg.test_windows_per_condition);
    let test_scores = scorer.scores(&test.windows)?;
    check_agreement(&pca, &test.windows, &test_scores)?;
    let evaluation = evaluate(&test, &test_scores, threshold, pca.components(), cfg.train_windows);

    let selftest = selftest(&onnx, stream_seed(cfg.seed, Stream::SelfTest))?;
    let reference = ReferenceStats {
        inputs: BTreeMap::from([(INPUT.to_string(), channel_stats(&train))]),
        outputs: BTreeMap::from([(OUTPUT.to_string(), score_stats(&validation_scores))]),
    };
    let manifest = manifest(&pca, threshold, reference);
    Ok(TrainedModel { onnx, manifest, selftest, evaluation })
}

/// A demo sequence: mostly normal windows with episodes of each fault, as (condition,
/// severity, window) in time order.
pub fn demo_windows(seed: u64) -> Vec<(Condition, f32, Vec<f32>)> {
    // (condition, windows, severity at start, severity at end): faults develop, as they do.
    const SCRIPT: [(Condition, usize, f32, f32); 9] = [
        (Condition::Normal, 16, 0.0, 0.0),
        (Condition::OuterRace, 6, 0.3, 0.9),
        (Condition::Normal, 10, 0.0, 0.0),
        (Condition::Imbalance, 4, 0.6, 0.9),
        (Condition::Normal, 10, 0.0, 0.0),
        (Condition::InnerRace, 5, 0.4, 1.0),
        (Condition::Normal, 8, 0.0, 0.0),
        (Condition::Looseness, 4, 0.6, 1.0),
        (Condition::Normal, 6, 0.0, 0.0),
    ];
    let mut source = VibrationSource::new(seed);
    let mut out = Vec::new();
    for (condition, count, from, to) in SCRIPT {
        for i in 0..count {
            let severity = if count > 1 { from + (to - from) * i as f32 / (count - 1) as f32 } else { from };
            out.push((condition, severity, source.window(condition, severity)));
        }
    }
    out
}

fn normal_windows(seed: u64, count: usize) -> Vec<f32> {
    let mut source = VibrationSource::new(seed);
    (0..count).flat_map(|_| source.window(Condition::Normal, 0.0)).collect()
}

/// Held-out windows of every condition, faults at severities spread evenly over
/// `SEVERITY_RANGE`.
struct TestSet {
    windows: Vec<f32>,
    labels: Vec<(Condition, f32)>,
}

impl TestSet {
    fn generate(seed: u64, per_condition: usize) -> TestSet {
        let mut source = VibrationSource::new(seed);
        let (lo, hi) = SEVERITY_RANGE;
        let mut windows = Vec::with_capacity(Condition::ALL.len() * per_condition * CHANNELS * WINDOW);
        let mut labels = Vec::new();
        for condition in Condition::ALL {
            for i in 0..per_condition {
                let severity =
                    if condition.is_fault() { lo + (hi - lo) * (i as f32 + 0.5) / per_condition as f32 } else { 0.0 };
                windows.extend(source.window(condition, severity));
                labels.push((condition, severity));
            }
        }
        TestSet { windows, labels }
    }

    fn scores_of(&self, scores: &[f32], wanted: impl Fn(Condition) -> bool) -> Vec<f32> {
        self.labels.iter().zip(scores).filter(|((c, _), _)| wanted(*c)).map(|(_, &s)| s).collect()
    }
}

fn evaluate(test: &TestSet, scores: &[f32], threshold: f32, components: usize, train_windows: usize) -> Evaluation {
    let normal = test.scores_of(scores, |c| !c.is_fault());
    let faults = test.scores_of(scores, Condition::is_fault);
    let per_condition = Condition::FAULTS
        .iter()
        .map(|&fault| {
            let these = test.scores_of(scores, |c| c == fault);
            (fault.name().to_string(), roc_auc(&normal, &these), rate_above(&these, threshold))
        })
        .collect();
    Evaluation {
        roc_auc: roc_auc(&normal, &faults),
        threshold,
        tpr: rate_above(&faults, threshold),
        fpr: rate_above(&normal, threshold),
        per_condition,
        components,
        train_windows,
        test_windows: test.labels.len(),
    }
}

/// Fails if the exported graph's scores differ from the fitted model's beyond float32 noise.
fn check_agreement(pca: &SpectralPca, windows: &[f32], graph_scores: &[f32]) -> Result<(), TrainError> {
    let fitted = pca.scores(&log_spectra(windows));
    for (window, (&graph, &fitted)) in graph_scores.iter().zip(&fitted).enumerate() {
        let graph = f64::from(graph);
        if (graph - fitted).abs() > AGREEMENT * fitted.abs().max(1.0) || !graph.is_finite() {
            return Err(TrainError::Mismatch { window, graph, fitted });
        }
    }
    Ok(())
}

/// Writes the fitted detector as an ONNX graph.
fn export(pca: &SpectralPca) -> Result<Vec<u8>, TrainError> {
    let batch = || Dim::Symbol(BATCH.to_string());
    let k = pca.components();
    let mut g = GraphBuilder::new("vibration_anomaly");
    let x = g.input_f32(INPUT, &[batch(), Dim::Fixed(CHANNELS as i64), Dim::Fixed(WINDOW as i64)]);
    let (cos, sin) = dft_matrices();
    let taper = g.constant_f32("hann", &[WINDOW], &hann());
    let cos = g.constant_f32("dft_cos", &[WINDOW, BINS], &cos);
    let sin = g.constant_f32("dft_sin", &[WINDOW, BINS], &sin);
    let floor = g.constant_f32("power_floor", &[], &[POWER_FLOOR]);
    let flat = g.constant_i64("flat_shape", &[2], &[0, FEATURES as i64]); // 0 keeps the batch dim
    let mean = g.constant_f32("feature_mean", &[FEATURES], &pca.mean);
    let inv_std = g.constant_f32("feature_inv_std", &[FEATURES], &pca.inv_std);
    let basis = g.constant_f32("pca_basis", &[FEATURES, k], pca.basis.transpose().as_slice());
    let basis_t = g.constant_f32("pca_basis_t", &[k, FEATURES], pca.basis.as_slice());
    let feature_axis = g.constant_i64("feature_axis", &[1], &[1]);
    let smoother = g.constant_f32("smoothing", &[BINS, BINS], &smoothing_matrix());
    let t2_scale = g.constant_f32("t2_scale", &[k], &pca.t2_scale);
    let spe_weight = g.constant_f32("spe_weight", &[], &[pca.spe_weight]);
    let calibration = g.constant_f32("calibration", &[], &[pca.calibration]);

    let tapered = g.node("Mul", &[&x, &taper], "tapered", vec![]);
    let re = g.node("MatMul", &[&tapered, &cos], "dft_re", vec![]);
    let im = g.node("MatMul", &[&tapered, &sin], "dft_im", vec![]);
    let re2 = g.node("Mul", &[&re, &re], "dft_re2", vec![]);
    let im2 = g.node("Mul", &[&im, &im], "dft_im2", vec![]);
    let power = g.node("Add", &[&re2, &im2], "power", vec![]);
    let power = g.node("MatMul", &[&power, &smoother], "power_smoothed", vec![]);
    let power = g.node("Add", &[&power, &floor], "power_floored", vec![]);
    let amplitude = g.node("Sqrt", &[&power], "amplitude", vec![]);
    let log_amplitude = g.node("Log", &[&amplitude], "log_amplitude", vec![]);
    let features = g.node("Reshape", &[&log_amplitude, &flat], "features", vec![]);
    let centred = g.node("Sub", &[&features, &mean], "centred", vec![]);
    let z = g.node("Mul", &[&centred, &inv_std], "standardised", vec![]);
    let coords = g.node("MatMul", &[&z, &basis], "pca_coords", vec![]);
    let reconstructed = g.node("MatMul", &[&coords, &basis_t], "reconstructed", vec![]);
    let residual = g.node("Sub", &[&z, &reconstructed], "residual", vec![]);
    let residual2 = g.node("Mul", &[&residual, &residual], "residual2", vec![]);
    let spe = g.node("ReduceSum", &[&residual2, &feature_axis], "spe", vec![attr_int("keepdims", 0)]);
    let spe = g.node("Mul", &[&spe, &spe_weight], "spe_weighted", vec![]);
    let whitened = g.node("Mul", &[&coords, &t2_scale], "pca_whitened", vec![]);
    let whitened2 = g.node("Mul", &[&whitened, &whitened], "pca_whitened2", vec![]);
    let t2 = g.node("ReduceSum", &[&whitened2, &feature_axis], "t2", vec![attr_int("keepdims", 0)]);
    let combined = g.node("Add", &[&spe, &t2], "combined", vec![]);
    g.node("Div", &[&combined, &calibration], OUTPUT, vec![]);
    g.output_f32(OUTPUT, &[batch()]);

    let doc = format!(
        "Vibration anomaly score: PCA residual (SPE) plus Hotelling T2 of smoothed log amplitude spectra \
         ({CHANNELS} axes, {WINDOW} samples at {SAMPLE_RATE} Hz), {k} components, scaled so the {}th percentile \
         of normal training windows scores 1.",
        CALIBRATION_QUANTILE * 100.0
    );
    Ok(encode(&g.finish(&doc)?))
}

fn manifest(pca: &SpectralPca, threshold: f32, reference: ReferenceStats) -> Manifest {
    let batch = || Dim::Symbol(BATCH.to_string());
    Manifest {
        format: FORMAT_VERSION,
        model: ModelInfo {
            name: MODEL_NAME.to_string(),
            version: "1".to_string(),
            task: Task::Anomaly,
            description: format!(
                "Bearing and rotor fault detector for 3-axis vibration ({WINDOW}-sample windows at {SAMPLE_RATE} Hz, \
                 channels first, in g): how far the log spectrum strays from {} principal components of \
                 normal operation ({:.1}% of variance); score 1 is the {}th percentile of normal training windows. \
                 Trained by outpost-train on synthetic data.",
                pca.components(),
                pca.explained * 100.0,
                CALIBRATION_QUANTILE * 100.0
            ),
            file: "model.onnx".to_string(),
            backend: Default::default(),
            preferred: None,
        },
        inputs: vec![TensorSpec {
            name: INPUT.to_string(),
            dtype: DType::F32,
            shape: vec![batch(), Dim::Fixed(CHANNELS as i64), Dim::Fixed(WINDOW as i64)],
        }],
        outputs: vec![TensorSpec { name: OUTPUT.to_string(), dtype: DType::F32, shape: vec![batch()] }],
        symbols: BTreeMap::from([(BATCH.to_string(), 1)]),
        ranges: BTreeMap::new(),
        labels: Vec::new(),
        pre: Some(PreProcess::Sensor(SensorPre {
            channels: CHANNELS,
            window: WINDOW,
            stride: None,
            scaling: Scaling::None,
            layout: SensorLayout::ChannelsFirst,
        })),
        post: Some(PostProcess::Anomaly(AnomalyPost { output: Some(OUTPUT.to_string()), threshold })),
        selftest: Some(SelfTestRef { file: SELFTEST_FILE.to_string(), atol: 1e-4, rtol: 1e-3 }),
        reference: Some(reference),
        files: BTreeMap::new(),
    }
}

/// Per-axis statistics of raw input windows (axis 1 of `[batch, 3, 256]`).
fn channel_stats(windows: &[f32]) -> TensorStats {
    let count = windows.len() / (CHANNELS * WINDOW);
    let mut stats = TensorStats { axis: Some(1), count: count as u64, ..Default::default() };
    for axis in 0..CHANNELS {
        let values = windows.chunks_exact(WINDOW).skip(axis).step_by(CHANNELS).flatten().map(|&v| f64::from(v));
        let (mut n, mut sum, mut sum2, mut min, mut max) = (0.0f64, 0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            n += 1.0;
            sum += v;
            sum2 += v * v;
            min = min.min(v);
            max = max.max(v);
        }
        let mean = sum / n.max(1.0);
        stats.mean.push(mean);
        stats.std.push((sum2 / n.max(1.0) - mean * mean).max(0.0).sqrt());
        stats.min.push(min);
        stats.max.push(max);
    }
    stats
}

/// Statistics and quantiles of normal scores, the baseline a device compares its scores to.
fn score_stats(scores: &[f32]) -> TensorStats {
    let values: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    TensorStats {
        axis: None,
        count: values.len() as u64,
        mean: vec![mean],
        std: vec![var.sqrt()],
        min: vec![values.iter().cloned().fold(f64::INFINITY, f64::min)],
        max: vec![values.iter().cloned().fold(f64::NEG_INFINITY, f64::max)],
        quantiles: SCORE_QUANTILES.iter().map(|&q| quantile(&values, q)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::sync::OnceLock;

    /// Small enough for a debug build, large enough for stable numbers.
    fn small_config() -> TrainConfig {
        TrainConfig { train_windows: 1200, test_windows_per_condition: 150, ..TrainConfig::default() }
    }

    /// One trained model shared by the tests that only inspect it.
    fn trained() -> &'static TrainedModel {
        static MODEL: OnceLock<TrainedModel> = OnceLock::new();
        MODEL.get_or_init(|| train_vibration_anomaly(&small_config()).expect("training the small config"))
    }

    #[test]
    fn exported_graph_scores_match_the_fitted_model_with_batch_pinned_to_1_and_4() {
        let pca = SpectralPca::fit(&log_spectra(&normal_windows(5, 400)), 0.95, 16).expect("fit");
        let onnx = export(&pca).expect("export");
        let mut source = VibrationSource::new(6);
        let windows: Vec<f32> = [Condition::Normal, Condition::OuterRace, Condition::Looseness, Condition::Imbalance]
            .into_iter()
            .cycle()
            .take(8)
            .flat_map(|c| source.window(c, 0.7))
            .collect();
        let fitted = pca.scores(&log_spectra(&windows));
        for batch in [Some(1), Some(4), None] {
            let graph =
                ArtifactScorer::load(&onnx, batch).expect("tract loads the export").scores(&windows).expect("run");
            assert_eq!(graph.len(), 8);
            for (g, f) in graph.iter().zip(&fitted) {
                assert!((f64::from(*g) - f).abs() <= 1e-4 * f.abs().max(1.0), "batch {batch:?}: graph {g}, fitted {f}");
            }
        }
        check_agreement(
            &pca,
            &windows,
            &ArtifactScorer::load(&onnx, None).expect("load").scores(&windows).expect("run"),
        )
        .expect("agreement");
    }

    #[test]
    fn detector_separates_faults_from_normal_and_keeps_false_alarms_near_the_budget() {
        let e = &trained().evaluation;
        assert!(e.roc_auc > 0.85, "{e:?}");
        assert!((e.fpr - small_config().target_fpr).abs() < 0.03, "{e:?}");
        assert!(e.tpr > 0.5, "{e:?}");
        assert_eq!(e.per_condition.len(), Condition::FAULTS.len());
        assert!(e.per_condition.iter().all(|(_, auc, _)| *auc > 0.75), "{e:?}");
        assert_eq!(e.test_windows, 150 * Condition::ALL.len());
        assert!(e.components >= 1 && e.components <= small_config().max_components);
    }

    #[test]
    fn manifest_validates_once_the_packager_fills_in_file_hashes() {
        let model = trained();
        let mut manifest = model.manifest.clone();
        assert!(manifest.files.is_empty(), "files are the packager's job");
        assert!(manifest.validate().is_err(), "an unhashed manifest must not pass");
        let selftest_json = serde_json::to_vec(&model.selftest).expect("selftest serialises");
        manifest.files.insert("model.onnx".into(), hex::encode(Sha256::digest(&model.onnx)));
        manifest.files.insert(SELFTEST_FILE.into(), hex::encode(Sha256::digest(&selftest_json)));
        manifest.validate().expect("manifest validates");
        assert_eq!(Manifest::from_toml(&manifest.to_toml()).expect("round trip"), manifest);
        let Some(PostProcess::Anomaly(post)) = &manifest.post else { panic!("anomaly post-processing") };
        assert_eq!(post.threshold, model.evaluation.threshold);
        let reference = manifest.reference.as_ref().expect("reference stats");
        assert_eq!(reference.inputs[INPUT].mean.len(), CHANNELS);
        assert_eq!(reference.outputs[OUTPUT].quantiles.len(), SCORE_QUANTILES.len());
    }

    #[test]
    fn selftest_cases_reproduce_with_tract_and_straddle_the_threshold() {
        let model = trained();
        let scorer = ArtifactScorer::load(&model.onnx, Some(1)).expect("load");
        let threshold = model.evaluation.threshold;
        let mut above = 0;
        for case in &model.selftest.cases {
            assert_eq!(case.inputs[0].shape, vec![1, CHANNELS, WINDOW]);
            let window: Vec<f32> = case.inputs[0].data.iter().filter_map(|v| v.as_f64()).map(|v| v as f32).collect();
            let expected = case.outputs[0].data[0].as_f64().expect("number");
            let got = f64::from(scorer.scores(&window).expect("run")[0]);
            assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
            above += usize::from(got > f64::from(threshold));
        }
        assert_eq!(model.selftest.cases.len(), 4);
        assert!((1..=3).contains(&above), "golden cases should show both outcomes, {above} of 4 above");
    }

    #[test]
    fn the_same_seed_exports_byte_identical_models() {
        let fit = || SpectralPca::fit(&log_spectra(&normal_windows(9, 300)), 0.9, 8).expect("fit");
        assert_eq!(export(&fit()).expect("export"), export(&fit()).expect("export"));
    }

    #[test]
    fn out_of_range_config_is_refused_with_the_field_named() {
        let cases = [
            TrainConfig { train_windows: 10, ..TrainConfig::default() },
            TrainConfig { variance_kept: 1.5, ..TrainConfig::default() },
            TrainConfig { max_components: 0, ..TrainConfig::default() },
            TrainConfig { target_fpr: f64::NAN, ..TrainConfig::default() },
        ];
        for (cfg, field) in cases.iter().zip(["train_windows", "variance_kept", "max_components", "target_fpr"]) {
            let err = train_vibration_anomaly(cfg).expect_err("invalid config");
            assert!(matches!(err, TrainError::Config { field: f, .. } if f == field), "{err}");
        }
    }

    #[test]
    fn demo_sequence_is_mostly_normal_and_shows_every_fault() {
        let demo = demo_windows(1);
        let normal = demo.iter().filter(|(c, _, _)| !c.is_fault()).count();
        assert!(normal * 3 > demo.len() * 2, "{normal} of {}", demo.len());
        for fault in Condition::FAULTS {
            assert!(demo.iter().any(|(c, _, _)| *c == fault), "{fault} missing");
        }
        assert!(demo.iter().all(|(_, _, w)| w.len() == CHANNELS * WINDOW));
        assert_eq!(
            demo_windows(1).iter().map(|d| &d.2).collect::<Vec<_>>(),
            demo.iter().map(|d| &d.2).collect::<Vec<_>>()
        );
    }
}
