//! Drift monitoring of one loaded model: the statistics of the tensors it sees, per window of
//! requests, scored against the reference statistics its package carries.
//!
//! Each request adds a bounded sample of its tensors' elements (at most
//! [`DriftSettings::max_elements`] per tensor, spread over every channel), so the cost per
//! request stays a few microseconds whatever the tensor size. A feature is a channel of a tensor
//! the manifest's `[reference]` describes (or the whole tensor when its statistics have no
//! axis). With reference quantiles the window's values are binned at them and scored with the
//! population stability index (PSI) and a Kolmogorov-Smirnov statistic at those points; with only
//! a mean and a standard deviation both are computed between the two normals, the PSI as their
//! symmetric divergence, which is what the binned index tends to for fine bins. The model's drift
//! score is its worst feature's PSI. A window closes after `window_samples` requests, or after
//! `window_secs` once it has `min_samples`; whoever polls takes the closed windows.

use crate::tensor::{visit_numeric, AsF64, NumericVisitor};
use crate::Tensor;
use outpost_proto::fleet::drift::{
    normals, score_bucket, DriftReport, DriftStatus, FeatureDrift, DEFAULT_ALERT_PSI, DEFAULT_WARN_PSI, SCORE_BUCKETS,
};
use outpost_proto::manifest::{ReferenceStats, TensorStats};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tract_onnx::prelude::DatumType;

/// The quantile levels of [`TensorStats::quantiles`], as the manifest documents them.
pub const QUANTILE_LEVELS: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];
/// Features reported per window, worst first.
const REPORTED_FEATURES: usize = 8;
/// Bin shares below this count as this in the PSI, so an empty bin is a large, finite term.
const PSI_FLOOR: f64 = 1e-4;

/// How windows are cut and judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftSettings {
    /// Requests after which a window closes.
    pub window_samples: u64,
    /// Age after which a window closes once it has `min_samples`.
    pub window_secs: u64,
    /// Requests a window needs before it can close on age.
    pub min_samples: u64,
    /// Elements sampled per tensor per request.
    pub max_elements: usize,
    /// PSI at which a window is `warn`.
    pub warn_psi: f64,
    /// PSI at which a window is `alert`.
    pub alert_psi: f64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            window_samples: 1000,
            window_secs: 300,
            min_samples: 100,
            max_elements: 4096,
            warn_psi: DEFAULT_WARN_PSI,
            alert_psi: DEFAULT_ALERT_PSI,
        }
    }
}

/// The reference side of one feature.
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    mean: f64,
    std: f64,
    /// Upper edges of the bins (inclusive), ascending without repeats; the last bin is open.
    edges: Vec<f64>,
    /// Reference share of each bin (`edges.len() + 1` of them).
    shares: Vec<f64>,
}

/// One feature: which tensor, which channel, and its reference.
#[derive(Debug, Clone, PartialEq)]
struct Feature {
    name: String,
    output: bool,
    tensor: String,
    /// The tensor's position among the graph's inputs or outputs.
    index: Option<usize>,
    /// The axis and the channel along it; `None` for the whole tensor.
    channel: Option<(usize, usize)>,
    reference: Reference,
}

/// What a window has seen of one feature.
#[derive(Debug, Clone, Default, PartialEq)]
struct Acc {
    n: f64,
    sum: f64,
    sum2: f64,
    bins: Vec<u64>,
}

impl Acc {
    fn add(&mut self, v: f64, edges: &[f64]) {
        if !v.is_finite() {
            return;
        }
        self.n += 1.0;
        self.sum += v;
        self.sum2 += v * v;
        if !edges.is_empty() {
            if self.bins.len() != edges.len() + 1 {
                self.bins = vec![0; edges.len() + 1];
            }
            self.bins[edges.partition_point(|&e| e < v)] += 1;
        }
    }

    fn merge(&mut self, other: &Acc) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum2 += other.sum2;
        if self.bins.len() < other.bins.len() {
            self.bins.resize(other.bins.len(), 0);
        }
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            *a += b;
        }
    }

    fn mean_std(&self) -> (f64, f64) {
        if self.n == 0.0 {
            return (0.0, 0.0);
        }
        let mean = self.sum / self.n;
        (mean, (self.sum2 / self.n - mean * mean).max(0.0).sqrt())
    }
}

/// One request's share of a window, computed before the lock is taken.
#[derive(Debug, Default)]
pub struct Sample {
    accs: Vec<Acc>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    samples: u64,
    accs: Vec<Acc>,
    scores: Vec<u64>,
}

impl Window {
    fn new(features: usize) -> Window {
        Window { opened: Instant::now(), samples: 0, accs: vec![Acc::default(); features], scores: Vec::new() }
    }
}

/// The drift monitor of one loaded model.
#[derive(Debug)]
pub struct DriftMonitor {
    version: String,
    settings: DriftSettings,
    features: Vec<Feature>,
    window: Mutex<Window>,
    closed: Mutex<Vec<DriftReport>>,
}

impl DriftMonitor {
    /// A monitor for `version` with the package's reference statistics, if any, for a graph
    /// with these input and output names (in graph order).
    pub fn new(
        version: &str,
        reference: Option<&ReferenceStats>,
        settings: DriftSettings,
        inputs: &[&str],
        outputs: &[&str],
    ) -> DriftMonitor {
        let mut features = Vec::new();
        if let Some(r) = reference {
            for (output, stats, names) in [(false, &r.inputs, inputs), (true, &r.outputs, outputs)] {
                for (tensor, s) in stats {
                    let index = names.iter().position(|n| n == tensor);
                    features.extend(features_of(tensor, output, s).into_iter().map(|f| Feature { index, ..f }));
                }
            }
        }
        let window = Mutex::new(Window::new(features.len()));
        DriftMonitor { version: version.to_string(), settings, features, window, closed: Mutex::new(Vec::new()) }
    }

    /// True when the package carries reference statistics for at least one tensor.
    pub fn has_reference(&self) -> bool {
        !self.features.is_empty()
    }

    /// Samples a request's inputs (in graph order); cheap, and takes no lock.
    pub fn sample_inputs(&self, inputs: &[Tensor]) -> Sample {
        let mut accs = vec![Acc::default(); self.features.len()];
        for (acc, f) in accs.iter_mut().zip(&self.features).filter(|(_, f)| !f.output) {
            if let Some(t) = f.index.and_then(|i| inputs.get(i)) {
                sample_tensor(t, f, self.settings.max_elements, acc);
            }
        }
        Sample { accs }
    }

    /// Adds a finished request: its input sample and its outputs (in graph order).
    pub fn record(&self, mut sample: Sample, outputs: &[Tensor]) {
        for (acc, f) in sample.accs.iter_mut().zip(&self.features).filter(|(_, f)| f.output) {
            if let Some(t) = f.index.and_then(|i| outputs.get(i)) {
                sample_tensor(t, f, self.settings.max_elements, acc);
            }
        }
        let score = outputs.first().and_then(primary_score);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.samples += 1;
        for (a, s) in w.accs.iter_mut().zip(&sample.accs) {
            a.merge(s);
        }
        if let Some(s) = score {
            if w.scores.is_empty() {
                w.scores = vec![0; SCORE_BUCKETS];
            }
            w.scores[score_bucket(s)] += 1;
        }
        if w.samples >= self.settings.window_samples.max(1) {
            let done = std::mem::replace(&mut *w, Window::new(self.features.len()));
            drop(w);
            self.close(done);
        }
    }

    /// Closes the open window when it is old enough and has enough requests; returns every
    /// window closed since the previous call, oldest first.
    pub fn poll(&self) -> Vec<DriftReport> {
        {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let due = w.opened.elapsed() >= Duration::from_secs(self.settings.window_secs)
                && w.samples >= self.settings.min_samples.max(1);
            if due {
                let done = std::mem::replace(&mut *w, Window::new(self.features.len()));
                drop(w);
                self.close(done);
            }
        }
        std::mem::take(&mut *self.closed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn close(&self, w: Window) {
        let report = self.judge(&w);
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        // Nobody polled for a long time: keep the newest windows only.
        if closed.len() >= 64 {
            closed.remove(0);
        }
        closed.push(report);
    }

    fn judge(&self, w: &Window) -> DriftReport {
        let mut features: Vec<FeatureDrift> =
            self.features.iter().zip(&w.accs).filter(|(_, a)| a.n > 0.0).map(|(f, a)| feature_drift(f, a)).collect();
        features.sort_by(|a, b| b.psi.total_cmp(&a.psi));
        let score = features.first().map_or(0.0, |f| f.psi);
        let ks = features.iter().map(|f| f.ks).fold(0.0, f64::max);
        let status = if features.is_empty() {
            DriftStatus::NoReference
        } else if score >= self.settings.alert_psi {
            DriftStatus::Alert
        } else if score >= self.settings.warn_psi {
            DriftStatus::Warn
        } else {
            DriftStatus::Ok
        };
        features.truncate(REPORTED_FEATURES);
        DriftReport {
            version: self.version.clone(),
            at_ms: now_ms(),
            samples: w.samples,
            score,
            ks,
            status,
            features,
            scores: w.scores.clone(),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The features of one tensor's reference statistics: one per channel along its axis.
fn features_of(tensor: &str, output: bool, s: &TensorStats) -> Vec<Feature> {
    let channels = s.mean.len().min(s.std.len());
    let mut out = Vec::with_capacity(channels);
    for c in 0..channels {
        let (mean, std) = (s.mean[c], s.std[c]);
        if !mean.is_finite() || !std.is_finite() || std < 0.0 {
            continue;
        }
        // The manifest gives quantiles of the first channel only.
        let (edges, shares) = if c == 0 { quantile_bins(&s.quantiles) } else { (Vec::new(), Vec::new()) };
        let (name, channel) = match s.axis {
            Some(axis) if channels > 1 || axis > 0 => (format!("{tensor}[{c}]"), Some((axis, c))),
            _ => (tensor.to_string(), None),
        };
        let reference = Reference { mean, std, edges, shares };
        out.push(Feature { name, output, tensor: tensor.to_string(), index: None, channel, reference });
    }
    out
}

/// Bins at the reference quantiles: equal quantiles (a discrete feature) merge their bins.
fn quantile_bins(quantiles: &[f64]) -> (Vec<f64>, Vec<f64>) {
    if quantiles.len() != QUANTILE_LEVELS.len()
        || quantiles.iter().any(|q| !q.is_finite())
        || quantiles.windows(2).any(|w| w[1] < w[0])
    {
        return (Vec::new(), Vec::new());
    }
    let mut edges: Vec<f64> = Vec::new();
    let mut cumulative: Vec<f64> = Vec::new();
    for (&q, &level) in quantiles.iter().zip(&QUANTILE_LEVELS) {
        if edges.last() == Some(&q) {
            *cumulative.last_mut().expect("pushed with the edge") = level;
        } else {
            edges.push(q);
            cumulative.push(level);
        }
    }
    let mut shares = Vec::with_capacity(edges.len() + 1);
    let mut below = 0.0;
    for c in &cumulative {
        shares.push(c - below);
        below = *c;
    }
    shares.push(1.0 - below);
    (edges, shares)
}

/// Adds to `acc` up to `max` / (channels along the feature's axis) elements of `t` that belong
/// to feature `f`, so that a request costs at most about `max` elements per tensor.
fn sample_tensor(t: &Tensor, f: &Feature, max: usize, acc: &mut Acc) {
    let shape = t.shape();
    let n = t.len();
    if n == 0 {
        return;
    }
    // Contiguous runs of `inner` elements belong to one channel; run `k` is channel k % channels.
    let (inner, channels, channel) = match f.channel {
        Some((axis, c)) if axis < shape.len() && c < shape[axis] => {
            (shape[axis + 1..].iter().product::<usize>().max(1), shape[axis], c)
        }
        Some(_) => return,
        None => (n, 1, 0),
    };
    let runs = n / (inner * channels).max(1);
    let total = runs * inner;
    // The tensor's budget is shared by its channels (each channel is a feature of its own).
    let stride = total.div_ceil((max / channels).max(1)).max(1);
    struct Strided<'a> {
        total: usize,
        stride: usize,
        inner: usize,
        channels: usize,
        channel: usize,
        edges: &'a [f64],
        acc: &'a mut Acc,
    }
    impl NumericVisitor for Strided<'_> {
        type Out = ();
        fn visit<T: AsF64>(self, data: &[T]) {
            let mut k = 0usize;
            while k < self.total {
                let (run, at) = (k / self.inner, k % self.inner);
                if let Some(v) = data.get((run * self.channels + self.channel) * self.inner + at) {
                    self.acc.add(v.as_f64(), self.edges);
                }
                k += self.stride;
            }
        }
    }
    visit_numeric(t, Strided { total, stride, inner, channels, channel, edges: &f.reference.edges, acc });
}

/// The request's primary score: the largest value of the first output's first row (the top
/// class's confidence, or an anomaly or event score).
fn primary_score(t: &Tensor) -> Option<f64> {
    let row = match t.shape() {
        [] => 1,
        [_] => 1,
        [_, rest @ ..] => rest.iter().product::<usize>(),
    };
    let best = |vals: &mut dyn Iterator<Item = f64>| vals.filter(|v| v.is_finite()).reduce(f64::max);
    match t.datum_type() {
        DatumType::F32 => {
            best(&mut crate::tensor::values::<f32>(t).ok()?.iter().take(row.max(1)).map(|&v| f64::from(v)))
        }
        DatumType::F64 => best(&mut crate::tensor::values::<f64>(t).ok()?.iter().take(row.max(1)).copied()),
        _ => None,
    }
}

fn feature_drift(f: &Feature, a: &Acc) -> FeatureDrift {
    let (mean, std) = a.mean_std();
    let r = &f.reference;
    let (psi, ks) = if !r.edges.is_empty() && a.bins.len() == r.shares.len() {
        binned(&a.bins, &r.edges, &r.shares)
    } else {
        normals(r.mean, r.std, mean, std)
    };
    FeatureDrift { feature: f.name.clone(), psi, ks, mean, std, ref_mean: r.mean, ref_std: r.std }
}

/// PSI and KS of observed bin counts against reference shares; the KS is read at the bin edges
/// (the reference quantiles), the only points where the reference CDF is known.
fn binned(bins: &[u64], _edges: &[f64], shares: &[f64]) -> (f64, f64) {
    let n: u64 = bins.iter().sum();
    if n == 0 {
        return (0.0, 0.0);
    }
    let (mut psi, mut ks, mut seen, mut expected) = (0.0, 0.0f64, 0.0, 0.0);
    for (&count, &share) in bins.iter().zip(shares) {
        let q = count as f64 / n as f64;
        let (qf, pf) = (q.max(PSI_FLOOR), share.max(PSI_FLOOR));
        psi += (qf - pf) * (qf / pf).ln();
        seen += q;
        expected += share;
        ks = ks.max((seen - expected).abs());
    }
    (psi, ks)
}

#[cfg(test)]
#[path = "drift_tests.rs"]
mod tests;
