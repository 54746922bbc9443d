//! Synthetic tri-axial vibration of a rotating machine on rolling-element bearings.
//!
//! outpost trains its demo anomaly detector in code, so it needs data it can make itself. The
//! generator follows the textbook picture a vibration analyst works with rather than pure noise:
//!
//! - the shaft turns at a speed that changes from window to window (20-35 Hz, a motor on a
//!   variable-frequency drive), so every rotational peak moves and the detector must not
//!   mistake a speed change for a fault;
//! - a healthy machine shows 1x/2x/3x shaft harmonics with random amplitudes and phases, a gear
//!   mesh tone with shaft-rate sidebands, friction noise that rings the housing's structural
//!   resonance, and broadband sensor noise whose level differs per machine and per axis;
//! - the three axes are two radial directions (x, y, seeing the rotor orbit 90 degrees apart)
//!   and one axial direction (z), each with its own mounting gain. The sensors are IEPE
//!   accelerometers, which are AC-coupled, so there is no gravity offset.
//!
//! Faults add what they add on real machines: a spalled outer race rings the resonance at the
//! ball-pass frequency of the outer race (BPFO, fixed in the load zone), an inner race defect at
//! BPFI with its strength modulated once per turn as the defect passes through the load zone,
//! imbalance raises 1x on the radial axes, and mechanical looseness adds a comb of harmonics and
//! half-harmonics and truncates the waveform where a loose foot hits its stop. Fault amplitude
//! grows linearly with `severity`, so at 0.1 a fault is buried in the normal spread.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::{PI, TAU};
use std::fmt;

/// Number of accelerometer axes per window (x and y radial, z axial).
pub const CHANNELS: usize = 3;
/// Samples per axis in one window.
pub const WINDOW: usize = 256;
/// Sampling rate of the accelerometer in Hz.
pub const SAMPLE_RATE: f32 = 6400.0;

/// Ball-pass frequency of the outer race as a multiple of shaft speed (a 9-ball bearing).
const BPFO_PER_REV: f64 = 3.58;
/// Ball-pass frequency of the inner race as a multiple of shaft speed.
const BPFI_PER_REV: f64 = 5.42;
/// Teeth on the pinion whose mesh tone every window carries.
const GEAR_TEETH: f64 = 17.0;
/// Peak acceleration (g) of one bearing impact at severity 1.
const IMPACT_G: f64 = 1.5;
/// How much 1x grows at severity 1 under imbalance (1 + this, times the healthy 1x).
const IMBALANCE_GAIN: f64 = 10.0;

/// Health state of the simulated machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Healthy machine.
    Normal,
    /// Spall on the bearing's outer race.
    OuterRace,
    /// Spall on the bearing's inner race.
    InnerRace,
    /// Rotor mass imbalance.
    Imbalance,
    /// Mechanical looseness (loose foot, worn fit).
    Looseness,
}

impl Condition {
    /// Every condition, healthy first.
    pub const ALL: [Condition; 5] =
        [Condition::Normal, Condition::OuterRace, Condition::InnerRace, Condition::Imbalance, Condition::Looseness];
    /// Every fault condition.
    pub const FAULTS: [Condition; 4] =
        [Condition::OuterRace, Condition::InnerRace, Condition::Imbalance, Condition::Looseness];

    /// Stable kebab-case name (`outer-race`).
    pub fn name(self) -> &'static str {
        match self {
            Condition::Normal => "normal",
            Condition::OuterRace => "outer-race",
            Condition::InnerRace => "inner-race",
            Condition::Imbalance => "imbalance",
            Condition::Looseness => "looseness",
        }
    }

    /// Whether this condition is a fault.
    pub fn is_fault(self) -> bool {
        self != Condition::Normal
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A seeded generator of accelerometer windows; the same seed gives the same windows.
#[derive(Debug, Clone)]
pub struct VibrationSource {
    rng: StdRng,
}

/// Everything about one window that a healthy machine varies: speed, harmonic content, noise.
struct Operating {
    shaft_hz: f64,
    /// Amplitude (g) and phase of the 1x, 2x and 3x shaft harmonics.
    harmonics: [(f64, f64); 3],
    /// Extra phase of y against the 90 degree orbit lag, per harmonic (orbits are not circles).
    y_skew: [f64; 3],
    /// Axial amplitude ratio and phase per harmonic.
    axial: [(f64, f64); 3],
    /// Mounting gain per axis.
    gain: [f64; CHANNELS],
    mesh_g: f64,
    mesh_phase: f64,
    /// Broadband sensor noise (g rms) per axis.
    noise_g: [f64; CHANNELS],
    /// Friction noise ringing the structural resonance (g rms).
    friction_g: f64,
    resonance_hz: f64,
    damping: f64,
    /// How strongly bearing impacts reach each axis.
    impact_path: [f64; CHANNELS],
}

impl VibrationSource {
    /// A generator whose windows are fully determined by `seed`.
    pub fn new(seed: u64) -> VibrationSource {
        VibrationSource { rng: StdRng::seed_from_u64(seed) }
    }

    /// One window of `CHANNELS * WINDOW` samples in g, channels first (`[3][256]`).
    ///
    /// `severity` (clamped to 0..=1) scales the fault's amplitude; it is ignored for `Normal`.
    pub fn window(&mut self, condition: Condition, severity: f32) -> Vec<f32> {
        let severity = if severity.is_finite() { f64::from(severity.clamp(0.0, 1.0)) } else { 0.0 };
        let op = self.operating();
        let mut axes = [[0.0f64; WINDOW]; CHANNELS];
        rotation(&op, &mut axes);
        match condition {
            Condition::Imbalance => imbalance(&op, severity, &mut axes),
            Condition::Looseness => self.looseness(&op, severity, &mut axes),
            _ => {}
        }
        self.gear_mesh(&op, &mut axes);
        self.friction(&op, &mut axes);
        match condition {
            Condition::OuterRace => self.race_impacts(&op, severity, BPFO_PER_REV, 0.0, &mut axes),
            Condition::InnerRace => self.race_impacts(&op, severity, BPFI_PER_REV, 0.8, &mut axes),
            _ => {}
        }
        for (axis, samples) in axes.iter_mut().enumerate() {
            for s in samples.iter_mut() {
                *s += op.noise_g[axis] * self.gaussian();
            }
        }
        axes.iter().flat_map(|a| a.iter().map(|&v| v as f32)).collect()
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.random::<f64>()
    }

    /// Log-uniform draw: levels that span a decade are spread evenly in decibels.
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.rng.random::<f64>()).exp()
    }

    /// Standard normal draw (Box-Muller), to avoid a distribution crate for one function.
    fn gaussian(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.random::<f64>(); // in (0, 1], so ln is finite
        let u2 = self.rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
    }

    fn operating(&mut self) -> Operating {
        let one_x = self.log_uniform(0.04, 0.14);
        let harmonics = [
            (one_x, self.uniform(0.0, TAU)),
            (one_x * self.uniform(0.1, 0.5), self.uniform(0.0, TAU)),
            (one_x * self.uniform(0.05, 0.3), self.uniform(0.0, TAU)),
        ];
        let y_skew = [self.uniform(-0.4, 0.4), self.uniform(-0.4, 0.4), self.uniform(-0.4, 0.4)];
        let axial = [
            (self.uniform(0.2, 0.5), self.uniform(0.0, TAU)),
            (self.uniform(0.2, 0.6), self.uniform(0.0, TAU)),
            (self.uniform(0.2, 0.6), self.uniform(0.0, TAU)),
        ];
        let gain = [self.uniform(0.85, 1.15), self.uniform(0.7, 1.1), self.uniform(0.8, 1.2)];
        let noise = self.log_uniform(0.004, 0.025);
        let noise_g = [noise * self.uniform(0.8, 1.2), noise * self.uniform(0.8, 1.2), noise * self.uniform(0.8, 1.2)];
        Operating {
            shaft_hz: self.uniform(20.0, 35.0),
            harmonics,
            y_skew,
            axial,
            gain,
            mesh_g: self.log_uniform(0.008, 0.04),
            mesh_phase: self.uniform(0.0, TAU),
            noise_g,
            // Friction noise rises with the broadband level but not in lockstep.
            friction_g: noise * self.log_uniform(0.6, 1.6),
            resonance_hz: self.uniform(2200.0, 2900.0),
            damping: self.uniform(0.03, 0.06),
            impact_path: [1.0, self.uniform(0.4, 0.8), self.uniform(0.1, 0.3)],
        }
    }

    /// Mesh tone at teeth x shaft speed with shaft-rate sidebands from runout, on every axis.
    fn gear_mesh(&mut self, op: &Operating, axes: &mut [[f64; WINDOW]; CHANNELS]) {
        let w = TAU * op.shaft_hz / f64::from(SAMPLE_RATE);
        let path = [self.uniform(0.5, 1.0), self.uniform(0.5, 1.0), self.uniform(0.3, 0.8)];
        let sideband = self.uniform(0.1, 0.4);
        for (axis, samples) in axes.iter_mut().enumerate() {
            let amp = op.gain[axis] * path[axis] * op.mesh_g;
            for (n, s) in samples.iter_mut().enumerate() {
                let t = w * n as f64;
                let carrier = GEAR_TEETH * t + op.mesh_phase;
                *s += amp * (carrier.cos() + sideband * ((carrier + t).cos() + (carrier - t).cos()));
            }
        }
    }

    /// Friction noise filtered by the housing resonance (a two-pole resonator), per axis.
    fn friction(&mut self, op: &Operating, axes: &mut [[f64; WINDOW]; CHANNELS]) {
        let theta = TAU * op.resonance_hz / f64::from(SAMPLE_RATE);
        let r = (-op.damping * theta).exp();
        let (a1, a2) = (2.0 * r * theta.cos(), -r * r);
        // Run-in samples so the filter state is stationary when the window starts.
        const RUN_IN: usize = 64;
        for (axis, samples) in axes.iter_mut().enumerate() {
            let mut rung = [0.0f64; WINDOW];
            let (mut y1, mut y2) = (0.0, 0.0);
            for n in 0..RUN_IN + WINDOW {
                let y = self.gaussian() + a1 * y1 + a2 * y2;
                (y2, y1) = (y1, y);
                if n >= RUN_IN {
                    rung[n - RUN_IN] = y;
                }
            }
            let rms = (rung.iter().map(|v| v * v).sum::<f64>() / WINDOW as f64).sqrt().max(f64::MIN_POSITIVE);
            let scale = op.friction_g * op.impact_path[axis].max(0.5) / rms;
            for (s, v) in samples.iter_mut().zip(rung) {
                *s += scale * v;
            }
        }
    }

    /// Bearing impacts at `per_rev` x shaft speed, each ringing the structural resonance.
    ///
    /// `load_zone_depth` > 0 modulates impact strength once per turn (inner race defects rotate
    /// with the shaft through the load zone); 0 keeps it constant (outer race defects sit still).
    fn race_impacts(
        &mut self,
        op: &Operating,
        severity: f64,
        per_rev: f64,
        load_zone_depth: f64,
        axes: &mut [[f64; WINDOW]; CHANNELS],
    ) {
        let fs = f64::from(SAMPLE_RATE);
        let period = 1.0 / (per_rev * op.shaft_hz);
        let duration = WINDOW as f64 / fs;
        let wn = TAU * op.resonance_hz;
        let decay = op.damping * wn;
        let wd = wn * (1.0 - op.damping * op.damping).sqrt();
        // Ringing is negligible after six time constants; start early so tails enter the window.
        let ring = 6.0 / decay;
        let shaft_phase = self.uniform(0.0, TAU);
        let mut t_hit = -self.uniform(0.0, period) - ring;
        while t_hit < duration {
            // Rolling elements slip, so the spacing jitters by about 1%.
            let next = t_hit + period * (1.0 + 0.01 * self.gaussian());
            let load = 1.0 - load_zone_depth * 0.5 * (1.0 - (TAU * op.shaft_hz * t_hit + shaft_phase).cos());
            let amp = IMPACT_G * severity * load * (1.0 + 0.15 * self.gaussian()).max(0.2);
            let first = ((t_hit * fs).ceil().max(0.0)) as usize;
            let last = (((t_hit + ring) * fs).floor().max(-1.0) as isize + 1).clamp(0, WINDOW as isize) as usize;
            for n in first..last {
                let tau = n as f64 / fs - t_hit;
                let v = amp * (-decay * tau).exp() * (wd * tau).sin();
                for (axis, samples) in axes.iter_mut().enumerate() {
                    samples[n] += op.gain[axis] * op.impact_path[axis] * v;
                }
            }
            t_hit = next;
        }
    }

    /// A comb of harmonics and half-harmonics on the radial axes, then one-sided truncation of x.
    fn looseness(&mut self, op: &Operating, severity: f64, axes: &mut [[f64; WINDOW]; CHANNELS]) {
        let w = TAU * op.shaft_hz / f64::from(SAMPLE_RATE);
        let one_x = op.harmonics[0].0;
        // Orders 0.5, 1.5, 2, 2.5, ... 10: the half orders come from the part rattling every
        // other turn.
        for half_order in 1..=20u32 {
            if half_order == 2 || half_order == 4 || half_order == 6 {
                continue; // 1x, 2x, 3x already exist; looseness raises the rest of the comb
            }
            let order = f64::from(half_order) / 2.0;
            let weight = if half_order % 2 == 1 { 0.6 } else { 1.0 };
            let amp = severity * one_x * weight * self.uniform(0.5, 1.0) / order.sqrt();
            let (px, py) = (self.uniform(0.0, TAU), self.uniform(0.0, TAU));
            let [x, y, _] = &mut *axes;
            for (n, (x, y)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
                let angle = order * w * n as f64;
                *x += op.gain[0] * amp * (angle + px).cos();
                *y += op.gain[1] * 0.5 * amp * (angle + py).cos();
            }
        }
        let peak = axes[0].iter().cloned().fold(f64::MIN, f64::max);
        let stop = peak * (1.0 - 0.4 * severity);
        for s in axes[0].iter_mut() {
            *s = s.min(stop);
        }
    }
}

/// Shaft harmonics: an elliptical orbit on x/y and a weaker, independently phased axial part.
fn rotation(op: &Operating, axes: &mut [[f64; WINDOW]; CHANNELS]) {
    let w = TAU * op.shaft_hz / f64::from(SAMPLE_RATE);
    for (h, &(amp, phase)) in op.harmonics.iter().enumerate() {
        let order = (h + 1) as f64;
        let (axial_ratio, axial_phase) = op.axial[h];
        // Per axis: amplitude and phase of this harmonic.
        let parts = [
            (op.gain[0] * amp, phase),
            (op.gain[1] * amp, phase - PI / 2.0 + op.y_skew[h]),
            (op.gain[2] * amp * axial_ratio, axial_phase),
        ];
        for (samples, (a, p)) in axes.iter_mut().zip(parts) {
            for (n, s) in samples.iter_mut().enumerate() {
                *s += a * (order * w * n as f64 + p).cos();
            }
        }
    }
}

/// Imbalance: a heavier 1x on the radial axes, in phase with the existing orbit.
fn imbalance(op: &Operating, severity: f64, axes: &mut [[f64; WINDOW]; CHANNELS]) {
    let w = TAU * op.shaft_hz / f64::from(SAMPLE_RATE);
    let (amp, phase) = op.harmonics[0];
    let extra = IMBALANCE_GAIN * severity * amp;
    let [x, y, _] = axes;
    for (n, (x, y)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
        let angle = w * n as f64 + phase;
        *x += op.gain[0] * extra * angle.cos();
        *y += op.gain[1] * extra * (angle - PI / 2.0).cos();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn same_seed_gives_identical_windows_and_different_seeds_do_not() {
        let mut a = VibrationSource::new(7);
        let mut b = VibrationSource::new(7);
        let mut c = VibrationSource::new(8);
        for condition in Condition::ALL {
            let wa = a.window(condition, 0.5);
            assert_eq!(wa, b.window(condition, 0.5));
            assert_ne!(wa, c.window(condition, 0.5));
        }
    }

    #[test]
    fn windows_are_channels_first_finite_and_of_plausible_amplitude() {
        let mut source = VibrationSource::new(1);
        for condition in Condition::ALL {
            for severity in [0.0, 0.5, 1.0, f32::NAN] {
                let w = source.window(condition, severity);
                assert_eq!(w.len(), CHANNELS * WINDOW);
                assert!(w.iter().all(|v| v.is_finite()));
                // A few tenths of a g: machine vibration, not a crash test.
                assert!(rms(&w) > 0.005 && rms(&w) < 2.0, "{condition} {severity}: rms {}", rms(&w));
            }
        }
    }

    #[test]
    fn fault_energy_grows_with_severity() {
        for condition in Condition::FAULTS {
            let mut weak = VibrationSource::new(3);
            let mut strong = VibrationSource::new(3);
            let mean_rms =
                |s: &mut VibrationSource, sev: f32| (0..40).map(|_| rms(&s.window(condition, sev))).sum::<f64>();
            assert!(mean_rms(&mut strong, 1.0) > mean_rms(&mut weak, 0.1), "{condition}");
        }
    }

    #[test]
    fn condition_names_are_stable_and_faults_exclude_normal() {
        let names: Vec<&str> = Condition::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["normal", "outer-race", "inner-race", "imbalance", "looseness"]);
        assert!(Condition::FAULTS.iter().all(|c| c.is_fault()));
        assert!(!Condition::Normal.is_fault());
    }
}
