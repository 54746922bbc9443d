//! `SVMClassifier` (SVC, NuSVC, LinearSVC) and `SVMRegressor` (SVR, NuSVR, OneClassSVM).
//!
//! A classifier with support vectors runs libsvm's one-against-one scheme: one decision value
//! per pair of classes, a vote per pair, and with `prob_a`/`prob_b` Platt's pairwise
//! probabilities coupled into class probabilities. The label is the class with the most votes,
//! as in libsvm and onnxruntime, even when probabilities are returned.

use super::labels::{classifier_facts, classifier_rules, Labels, Pick};
use super::transform::{write_scores, PostTransform, SecondClass};
use super::{built, describe, list, rows_and_columns, rows_rule, slice, tensor_of, Built, Kernel};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Registers `SVMClassifier` and `SVMRegressor`.
pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("SVMClassifier", classifier);
    reg.insert("SVMRegressor", regressor);
}

/// The kernel `k(x, v)` between an input row and a support vector.
#[derive(Debug, Clone, Copy)]
enum SvmKernel {
    Linear,
    Poly { gamma: f32, coef0: f32, degree: f32 },
    Rbf { gamma: f32 },
    Sigmoid { gamma: f32, coef0: f32 },
}

impl SvmKernel {
    fn from_node(node: &NodeProto) -> TractResult<SvmKernel> {
        let params: Vec<f32> = list(node, "kernel_params")?;
        let (gamma, coef0, degree) = match params[..] {
            [] => (0.0, 0.0, 0.0),
            [g, c, d, ..] => (g, c, d),
            _ => bail!("{}: `kernel_params` needs gamma, coef0 and degree", describe(node)),
        };
        Ok(match node.get_attr_opt::<&str>("kernel_type")?.unwrap_or("LINEAR") {
            "LINEAR" => SvmKernel::Linear,
            "POLY" => SvmKernel::Poly { gamma, coef0, degree },
            "RBF" => SvmKernel::Rbf { gamma },
            "SIGMOID" => SvmKernel::Sigmoid { gamma, coef0 },
            other => bail!("{}: kernel_type `{other}` is not LINEAR, POLY, RBF or SIGMOID", describe(node)),
        })
    }

    fn apply(self, x: &[f32], v: &[f32]) -> f32 {
        let dot = || x.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        match self {
            SvmKernel::Linear => dot(),
            SvmKernel::Poly { gamma, coef0, degree } => {
                let base = gamma * dot() + coef0;
                if degree == 2.0 {
                    base * base
                } else if degree == 3.0 {
                    base * base * base
                } else {
                    base.powf(degree)
                }
            }
            SvmKernel::Rbf { gamma } => {
                let d2: f32 = x.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum();
                (-gamma * d2).exp()
            }
            SvmKernel::Sigmoid { gamma, coef0 } => (gamma * dot() + coef0).tanh(),
        }
    }
}

/// The input as rows of `features` floats.
fn input_rows(name: &str, x: &TValue, features: usize) -> TractResult<(Vec<f32>, usize)> {
    let (n, c) = rows_and_columns(name, x.shape())?;
    if c != features {
        bail!("{name}: the model was trained on {features} features, the input has {c} per row");
    }
    let x = super::floats(name, x)?;
    Ok((slice::<f32>(&x)?.to_vec(), n))
}

/// How the classifier computes its decision values.
#[derive(Debug)]
enum Mode {
    /// Support vectors: `per_class[i]` vectors of class `i` from `starts[i]`, coefficients
    /// `[classes - 1, vectors]`, one decision value per pair of classes.
    Svc { vectors: Vec<f32>, per_class: Vec<usize>, starts: Vec<usize> },
    /// No support vectors (LinearSVC): `coefficients` is `[classes, features]`.
    Linear,
}

#[derive(Debug)]
struct SvmClassifier {
    name: String,
    kernel: SvmKernel,
    mode: Mode,
    features: usize,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    labels: Labels,
    post: PostTransform,
    weights_positive: bool,
}

fn classifier(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let labels = Labels::from_node(node, "classlabels_ints")?;
    let classes = labels.len();
    let coefficients: Vec<f32> = list(node, "coefficients")?;
    let rho: Vec<f32> = list(node, "rho")?;
    let prob_a: Vec<f32> = list(node, "prob_a")?;
    let prob_b: Vec<f32> = list(node, "prob_b")?;
    let vectors: Vec<f32> = list(node, "support_vectors")?;
    let per_class = list::<i64>(node, "vectors_per_class")?
        .into_iter()
        .map(|v| usize::try_from(v).map_err(|_| format_err!("{name}: negative `vectors_per_class`")))
        .collect::<TractResult<Vec<usize>>>()?;
    if classes < 2 {
        bail!("{name}: a classifier needs at least two class labels, it has {classes}");
    }
    if coefficients.is_empty() || rho.is_empty() {
        bail!("{name}: `coefficients` and `rho` must not be empty");
    }
    let pairs = classes * (classes - 1) / 2;
    if prob_a.len() != prob_b.len() || (!prob_a.is_empty() && prob_a.len() != pairs) {
        bail!("{name}: `prob_a` and `prob_b` need one value per pair of classes ({pairs})");
    }
    let count: usize = per_class.iter().sum();
    let (mode, features) = if count > 0 {
        if per_class.len() != classes
            || !vectors.len().is_multiple_of(count)
            || coefficients.len() != (classes - 1) * count
        {
            bail!(
                "{name}: {count} support vectors in {} classes, {} support vector values and {} coefficients \
                 do not fit {classes} classes",
                per_class.len(),
                vectors.len(),
                coefficients.len()
            );
        }
        if rho.len() != pairs {
            bail!("{name}: `rho` needs one value per pair of classes ({pairs}), it has {}", rho.len());
        }
        let starts = per_class.iter().scan(0, |s, n| Some(std::mem::replace(s, *s + n))).collect();
        let features = vectors.len() / count;
        (Mode::Svc { vectors, per_class, starts }, features)
    } else {
        if !coefficients.len().is_multiple_of(classes) {
            bail!("{name}: {} coefficients do not split into {classes} classes", coefficients.len());
        }
        (Mode::Linear, coefficients.len() / classes)
    };
    let weights_positive = coefficients.iter().all(|c| *c >= 0.0);
    let kernel = if matches!(mode, Mode::Linear) { SvmKernel::Linear } else { SvmKernel::from_node(node)? };
    let post = PostTransform::from_node(node)?;
    built(SvmClassifier {
        name,
        kernel,
        mode,
        features,
        coefficients,
        rho,
        prob_a,
        prob_b,
        labels,
        post,
        weights_positive,
    })
}

impl SvmClassifier {
    fn classes(&self) -> usize {
        self.labels.len()
    }

    /// Columns of the score output: class probabilities, the pairwise decision values of a
    /// multi-class SVC without probabilities, or two columns for a two-class one.
    fn score_columns(&self) -> usize {
        let classes = self.classes();
        match self.mode {
            Mode::Svc { .. } if self.prob_a.is_empty() && classes > 2 => classes * (classes - 1) / 2,
            Mode::Svc { .. } if self.prob_a.is_empty() => 2,
            _ => classes,
        }
    }

    /// Scores one row into `out`; returns the label.
    fn row(&self, x: &[f32], out: &mut [f32]) -> Pick {
        let classes = self.classes();
        let Mode::Svc { vectors, per_class, starts } = &self.mode else {
            let mut scores: Vec<f32> = self
                .coefficients
                .chunks(self.features.max(1))
                .take(classes)
                .map(|w| self.kernel.apply(x, w) + self.rho[0])
                .collect();
            let mut best = 0;
            for (k, s) in scores.iter().enumerate() {
                if *s > scores[best] {
                    best = k;
                }
            }
            let top = scores[best];
            let pick = if classes == 2
                && self.prob_a.is_empty()
                && (self.weights_positive && top >= 0.5 || top > 0.0 && !self.weights_positive)
            {
                1
            } else {
                best
            };
            write_scores(&mut scores, self.post, SecondClass::Absent, out);
            return Pick::Class(pick);
        };
        let count = starts.last().zip(per_class.last()).map_or(0, |(s, n)| s + n);
        let kernels: Vec<f32> =
            vectors.chunks(self.features.max(1)).take(count).map(|v| self.kernel.apply(x, v)).collect();
        let mut decisions = Vec::with_capacity(classes * (classes - 1) / 2);
        let mut votes = vec![0usize; classes];
        for i in 0..classes {
            for j in i + 1..classes {
                // Sums in double, as libsvm and onnxruntime do.
                let side = |row: usize, class: usize| -> f64 {
                    let coef = &self.coefficients[row * count + starts[class]..][..per_class[class]];
                    let k = &kernels[starts[class]..][..per_class[class]];
                    coef.iter().zip(k).map(|(c, k)| (c * k) as f64).sum()
                };
                let sum = side(j - 1, i) + side(i, j) + self.rho[decisions.len()] as f64;
                votes[if sum > 0.0 { i } else { j }] += 1;
                decisions.push(sum as f32);
            }
        }
        let mut best = 0;
        for (k, v) in votes.iter().enumerate() {
            if *v > votes[best] {
                best = k;
            }
        }
        if self.prob_a.is_empty() {
            let second = if classes > 2 {
                SecondClass::Absent
            } else if self.post == PostTransform::None {
                SecondClass::Negated
            } else {
                SecondClass::Complement
            };
            write_scores(&mut decisions, self.post, second, out);
        } else {
            let mut pairwise = vec![0f32; classes * classes];
            let mut index = 0;
            for i in 0..classes {
                for j in i + 1..classes {
                    let p =
                        1.0 - super::transform::logistic(decisions[index] * self.prob_a[index] + self.prob_b[index]);
                    let p = p.clamp(1.0e-7, 1.0 - 1.0e-7);
                    pairwise[i * classes + j] = p;
                    pairwise[j * classes + i] = 1.0 - p;
                    index += 1;
                }
            }
            let mut probabilities = vec![0f32; classes];
            multiclass_probability(classes, &pairwise, &mut probabilities);
            write_scores(&mut probabilities, self.post, SecondClass::Absent, out);
        }
        Pick::Class(best)
    }
}

/// Couples pairwise probabilities `r[i][j]` into class probabilities (Wu, Lin and Weng 2004,
/// method 2), iterating as libsvm does.
fn multiclass_probability(k: usize, r: &[f32], p: &mut [f32]) {
    let mut q = vec![0f32; k * k];
    let mut qp = vec![0f32; k];
    let eps = 0.005 / k as f32;
    for i in 0..k {
        p[i] = 1.0 / k as f32;
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0f32;
        for i in 0..k {
            qp[i] = (0..k).map(|j| q[i * k + j] * p[j]).fold(0.0, |a, b| a + b);
            pqp += p[i] * qp[i];
        }
        let max_error = qp.iter().map(|v| (v - pqp).abs()).fold(0f32, f32::max);
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
}

impl Kernel for SvmClassifier {
    fn op_type(&self) -> &'static str {
        "SVMClassifier"
    }

    fn outputs(&self) -> usize {
        2
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        classifier_rules(s, inputs, outputs, self.labels.datum_type(), self.score_columns())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        classifier_facts(&self.name, inputs, self.labels.datum_type(), self.score_columns())
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n) = input_rows(&self.name, &inputs[0], self.features)?;
        let k = self.score_columns();
        let mut out = vec![0f32; n * k];
        let picks: Vec<Pick> = x
            .chunks(self.features.max(1))
            .take(n)
            .enumerate()
            .map(|(r, row)| self.row(row, &mut out[r * k..][..k]))
            .collect();
        Ok(tvec!(self.labels.tensor(&picks)?, tensor_of(&[n, k], out)?))
    }
}

/// `SVMRegressor`: `[N, 1]` decision values, or ±1 with `one_class`. onnxruntime ignores
/// `post_transform` here, and so do we.
#[derive(Debug)]
struct SvmRegressor {
    name: String,
    kernel: SvmKernel,
    /// Support vectors, `[n_supports, features]`; empty for a linear model.
    vectors: Vec<f32>,
    features: usize,
    coefficients: Vec<f32>,
    rho: f32,
    one_class: bool,
}

fn regressor(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let name = describe(node);
    let supports = node.get_attr_opt::<i64>("n_supports")?.unwrap_or(0);
    let supports = usize::try_from(supports).map_err(|_| format_err!("{name}: negative `n_supports`"))?;
    let coefficients: Vec<f32> = list(node, "coefficients")?;
    let rho = *list::<f32>(node, "rho")?.first().ok_or_else(|| format_err!("{name}: `rho` is missing"))?;
    let vectors: Vec<f32> = list(node, "support_vectors")?;
    let one_class = node.get_attr_opt::<i64>("one_class")?.unwrap_or(0) != 0;
    if coefficients.is_empty() {
        bail!("{name}: `coefficients` is empty");
    }
    let (kernel, features, vectors) = if supports > 0 {
        if coefficients.len() != supports || !vectors.len().is_multiple_of(supports) {
            bail!(
                "{name}: {supports} support vectors need {supports} coefficients and a multiple of {supports} \
                 support vector values, got {} and {}",
                coefficients.len(),
                vectors.len()
            );
        }
        (SvmKernel::from_node(node)?, vectors.len() / supports, vectors)
    } else {
        (SvmKernel::Linear, coefficients.len(), vec![])
    };
    built(SvmRegressor { name, kernel, vectors, features, coefficients, rho, one_class })
}

impl Kernel for SvmRegressor {
    fn op_type(&self) -> &'static str {
        "SVMRegressor"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[1], 1.to_dim())?;
        rows_rule(s, &inputs[0], &outputs[0])
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&[super::row_dim(&self.name, inputs[0])?, 1.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n) = input_rows(&self.name, &inputs[0], self.features)?;
        let out: Vec<f32> = x
            .chunks(self.features.max(1))
            .take(n)
            .map(|row| {
                let y = if self.vectors.is_empty() {
                    self.kernel.apply(row, &self.coefficients) + self.rho
                } else {
                    let dot: f32 = self
                        .vectors
                        .chunks(self.features.max(1))
                        .zip(&self.coefficients)
                        .map(|(v, c)| c * self.kernel.apply(row, v))
                        .sum();
                    dot + self.rho
                };
                if !self.one_class {
                    y
                } else if y > 0.0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        Ok(tvec!(tensor_of(&[n, 1], out)?))
    }
}
