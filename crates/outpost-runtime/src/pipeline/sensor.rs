//! Sensor series: a JSON body into sliding windows.
//!
//! Two body shapes are accepted, numbers only:
//!
//! - channels first, one array per channel, all of the same length (a buffer per sensor axis):
//!   `{"channels": [[ax0, ax1, ...], [ay0, ay1, ...], [az0, az1, ...]]}`
//! - time steps, one row per reading with one value per channel (a log line per reading):
//!   `{"samples": [[ax0, ay0, az0], [ax1, ay1, az1], ...]}`
//!
//! The series must have exactly `channels` channels, only numbers that fit in an f32, and at
//! least `window` time steps. Windows of `window` steps start every `stride` steps (default: back
//! to back). Steps after the last whole window are dropped rather than zero-padded as audio is,
//! because a sensor window padded with zeros looks like a real, and probably anomalous, reading.
//!
//! Each window is scaled per channel (`standard`: `(x - mean) / std`, `minmax`: `(x - min) /
//! (max - min)`) and laid out as `[1, channels, window]`, `[1, window, channels]` or
//! `[1, window * channels]` with the channels of each time step together.

use super::{check_request_size, client, config, f32_tensor, ItemMeta, PipelineError};
use crate::Tensor;
use outpost_proto::manifest::{Scaling, SensorLayout, SensorPre};
use serde::Deserialize;

/// Parses `body` and cuts it into model inputs as `pre` describes.
pub(super) fn prepare(pre: &SensorPre, body: &[u8]) -> Result<Vec<(Tensor, ItemMeta)>, PipelineError> {
    let plan = WindowPlan::from_pre(pre)?;
    let series = Series::parse(body, plan.channels)?;
    if series.len < plan.window {
        return Err(client(format!(
            "sensor: the series has {} time steps but one window needs {}",
            series.len, plan.window
        )));
    }
    let windows = (series.len - plan.window) / plan.stride + 1;
    check_request_size("sensor", windows, plan.window * plan.channels)?;

    let (c, w) = (plan.channels, plan.window);
    let shape: Vec<usize> = match pre.layout {
        SensorLayout::ChannelsFirst => vec![1, c, w],
        SensorLayout::ChannelsLast => vec![1, w, c],
        SensorLayout::Flat => vec![1, w * c],
    };
    let mut items = Vec::with_capacity(windows);
    for start in (0..windows).map(|i| i * plan.stride) {
        // Each channel's part of this window, already scaled.
        let parts: Vec<Vec<f32>> = series
            .data
            .chunks_exact(series.len)
            .zip(&plan.scale)
            .map(|(channel, &(offset, factor))| {
                channel.iter().skip(start).take(w).map(|&x| (x - offset) * factor).collect()
            })
            .collect();
        let values: Vec<f32> = match pre.layout {
            SensorLayout::ChannelsFirst => parts.concat(),
            SensorLayout::ChannelsLast | SensorLayout::Flat => {
                (0..w).flat_map(|t| parts.iter().map(move |p| p.get(t).copied().unwrap_or(0.0))).collect()
            }
        };
        items.push((f32_tensor(&shape, &values)?, ItemMeta::SensorWindow { start }));
    }
    Ok(items)
}

/// Window geometry and scaling, checked against the manifest.
struct WindowPlan {
    channels: usize,
    window: usize,
    stride: usize,
    /// Per channel, `(offset, factor)`: a value `x` becomes `(x - offset) * factor`.
    scale: Vec<(f32, f32)>,
}

impl WindowPlan {
    fn from_pre(pre: &SensorPre) -> Result<WindowPlan, PipelineError> {
        if pre.channels == 0 || pre.window == 0 {
            return Err(config(format!(
                "pre.channels is {} and pre.window is {}; both must be at least 1",
                pre.channels, pre.window
            )));
        }
        if pre.channels.checked_mul(pre.window).is_none() {
            return Err(config("pre.channels x pre.window is too large"));
        }
        let stride = pre.stride.unwrap_or(pre.window);
        if stride == 0 {
            return Err(config("pre.stride is 0; it must be at least 1 (or absent for back-to-back windows)"));
        }
        let scale = match &pre.scaling {
            Scaling::None => vec![(0.0, 1.0); pre.channels],
            Scaling::Standard { mean, std } => per_channel(pre.channels, "standard", mean, std, |m, s| (m, s))?,
            Scaling::Minmax { min, max } => per_channel(pre.channels, "minmax", min, max, |lo, hi| (lo, hi - lo))?,
        };
        Ok(WindowPlan { channels: pre.channels, window: pre.window, stride, scale })
    }
}

/// Per-channel `(offset, 1 / spread)` from two per-channel lists, where `spread` (std, or
/// max - min) must be a finite non-zero number: dividing by it is the whole point.
fn per_channel(
    channels: usize,
    kind: &str,
    a: &[f32],
    b: &[f32],
    offset_and_spread: impl Fn(f32, f32) -> (f32, f32),
) -> Result<Vec<(f32, f32)>, PipelineError> {
    if a.len() != channels || b.len() != channels {
        return Err(config(format!(
            "pre.scaling ({kind}) has {} and {} values for {channels} channels; give one per channel",
            a.len(),
            b.len()
        )));
    }
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(c, (&x, &y))| {
            let (offset, spread) = offset_and_spread(x, y);
            if offset.is_finite() && spread.is_finite() && spread != 0.0 {
                Ok((offset, 1.0 / spread))
            } else {
                Err(config(format!(
                    "pre.scaling ({kind}) for channel {c} gives offset {offset} and spread {spread}; the spread \
                     must be a finite non-zero number"
                )))
            }
        })
        .collect()
}

/// The two accepted body shapes; exactly one field must be present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    channels: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    samples: Option<Vec<Vec<f64>>>,
}

/// A checked series, channel by channel: `data[c * len + t]`.
struct Series {
    len: usize,
    data: Vec<f32>,
}

impl Series {
    fn parse(body: &[u8], channels: usize) -> Result<Series, PipelineError> {
        const SHAPES: &str = r#"send {"channels": [[...], ...]} (one array per channel) or {"samples": [[...], ...]} (one row per time step)"#;
        if body.is_empty() {
            return Err(client(format!("sensor: the request body is empty; {SHAPES}")));
        }
        let parsed: Body = serde_json::from_slice(body)
            .map_err(|e| client(format!("sensor: cannot read the body ({e}); {SHAPES}")))?;
        let series = match (parsed.channels, parsed.samples) {
            (Some(by_channel), None) => Series::from_channels(by_channel, channels)?,
            (None, Some(rows)) => Series::from_rows(rows, channels)?,
            (Some(_), Some(_)) => {
                return Err(client(format!("sensor: the body has both `channels` and `samples`; {SHAPES}")))
            }
            (None, None) => {
                return Err(client(format!("sensor: the body has neither `channels` nor `samples`; {SHAPES}")))
            }
        };
        Ok(series)
    }

    fn from_channels(by_channel: Vec<Vec<f64>>, channels: usize) -> Result<Series, PipelineError> {
        if by_channel.len() != channels {
            return Err(client(format!(
                "sensor: `channels` has {} arrays but the model takes {channels} channels",
                by_channel.len()
            )));
        }
        let len = by_channel.first().map_or(0, Vec::len);
        // Lengths are checked before allocating, so the allocation is bounded by the body's size.
        if let Some((c, values)) = by_channel.iter().enumerate().find(|(_, v)| v.len() != len) {
            return Err(client(format!(
                "sensor: channel {c} has {} values but channel 0 has {len}; all channels must be the same length",
                values.len()
            )));
        }
        let mut data = Vec::with_capacity(len * channels);
        for (c, values) in by_channel.iter().enumerate() {
            for (t, &x) in values.iter().enumerate() {
                data.push(finite(x, c, t)?);
            }
        }
        Ok(Series { len, data })
    }

    fn from_rows(rows: Vec<Vec<f64>>, channels: usize) -> Result<Series, PipelineError> {
        let len = rows.len();
        if let Some((t, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != channels) {
            return Err(client(format!(
                "sensor: `samples` row {t} has {} values but the model takes {channels} channels",
                row.len()
            )));
        }
        let mut data = vec![0.0f32; len * channels];
        for (t, row) in rows.iter().enumerate() {
            for (c, &x) in row.iter().enumerate() {
                if let Some(slot) = data.get_mut(c * len + t) {
                    *slot = finite(x, c, t)?;
                }
            }
        }
        Ok(Series { len, data })
    }
}

/// `x` as an f32, refusing values that overflow it (JSON itself has no NaN or infinity).
fn finite(x: f64, channel: usize, step: usize) -> Result<f32, PipelineError> {
    let v = x as f32;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(client(format!("sensor: channel {channel}, time step {step} is {x}, which does not fit a 32-bit float")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(channels: usize, window: usize) -> SensorPre {
        toml::from_str(&format!("channels = {channels}\nwindow = {window}")).unwrap()
    }

    fn values(items: &[(Tensor, ItemMeta)], i: usize) -> Vec<f32> {
        crate::tensor::values::<f32>(&items[i].0).unwrap().to_vec()
    }

    #[test]
    fn both_body_shapes_give_the_same_windows() {
        let p = pre(2, 3);
        let a = prepare(&p, br#"{"channels": [[1, 2, 3], [10, 20, 30]]}"#).unwrap();
        let b = prepare(&p, br#"{"samples": [[1, 10], [2, 20], [3, 30]]}"#).unwrap();
        assert_eq!(values(&a, 0), vec![1.0, 2.0, 3.0, 10.0, 20.0, 30.0]);
        assert_eq!(values(&a, 0), values(&b, 0));
        assert_eq!(a[0].0.shape(), &[1, 2, 3]);
    }

    #[test]
    fn layouts_interleave_channels_per_time_step() {
        let mut p = pre(2, 3);
        let body = br#"{"channels": [[1, 2, 3], [10, 20, 30]]}"#;
        p.layout = SensorLayout::ChannelsLast;
        let items = prepare(&p, body).unwrap();
        assert_eq!(items[0].0.shape(), &[1, 3, 2]);
        assert_eq!(values(&items, 0), vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
        p.layout = SensorLayout::Flat;
        let items = prepare(&p, body).unwrap();
        assert_eq!(items[0].0.shape(), &[1, 6]);
        assert_eq!(values(&items, 0), vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
    }

    #[test]
    fn windows_follow_the_stride_and_drop_the_partial_tail() {
        let mut p = pre(1, 4);
        let body = br#"{"channels": [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]}"#;
        let items = prepare(&p, body).unwrap();
        assert_eq!(items.len(), 2);
        p.stride = Some(2);
        let items = prepare(&p, body).unwrap();
        let starts: Vec<ItemMeta> = items.iter().map(|(_, m)| *m).collect();
        assert_eq!(starts, (0..4).map(|i| ItemMeta::SensorWindow { start: 2 * i }).collect::<Vec<_>>());
        assert_eq!(values(&items, 3), vec![6.0, 7.0, 8.0, 9.0]);
    }

    #[test]
    fn scaling_is_per_channel() {
        let mut p = pre(2, 2);
        p.scaling = Scaling::Standard { mean: vec![1.0, 10.0], std: vec![2.0, 5.0] };
        let items = prepare(&p, br#"{"channels": [[1, 5], [10, 0]]}"#).unwrap();
        assert_eq!(values(&items, 0), vec![0.0, 2.0, 0.0, -2.0]);
        p.scaling = Scaling::Minmax { min: vec![0.0, -1.0], max: vec![10.0, 1.0] };
        let items = prepare(&p, br#"{"channels": [[5, 10], [0, 1]]}"#).unwrap();
        assert_eq!(values(&items, 0), vec![0.5, 1.0, 0.5, 1.0]);
    }

    #[test]
    fn degenerate_scaling_is_a_config_error_not_a_division_by_zero() {
        let mut p = pre(1, 1);
        p.scaling = Scaling::Minmax { min: vec![3.0], max: vec![3.0] };
        let err = prepare(&p, br#"{"channels": [[1]]}"#).unwrap_err();
        assert!(!err.is_client_error() && err.to_string().contains("spread"), "{err}");
        p.scaling = Scaling::Standard { mean: vec![0.0, 0.0], std: vec![1.0, 1.0] };
        assert!(!prepare(&p, br#"{"channels": [[1]]}"#).unwrap_err().is_client_error());
    }

    #[test]
    fn malformed_series_are_client_errors() {
        let p = pre(2, 2);
        let cases: [&[u8]; 10] = [
            br#"{"channels": [[1, NaN], [3, 4]]}"#,
            br#"{"channels": [[1, 2], [3]]}"#,
            br#"{"channels": [[1, 2]]}"#,
            br#"{"samples": [[1, 2], [3]]}"#,
            br#"{"channels": [[1, null], [3, 4]]}"#,
            br#"{"channels": [[1, 1e300], [3, 4]]}"#,
            br#"{"channels": [[1], [3]]}"#,
            br#"{"chanels": [[1, 2], [3, 4]]}"#,
            br#"{"channels": [[1, 2], [3, 4]], "samples": [[1, 2]]}"#,
            b"[1, 2, 3",
        ];
        for body in cases {
            let err = prepare(&p, body).unwrap_err();
            assert!(err.is_client_error(), "{}: {err}", String::from_utf8_lossy(body));
        }
        let err = prepare(&p, br#"{"channels": [[1, 2], [3]]}"#).unwrap_err();
        assert!(err.to_string().contains("channel 1"), "{err}");
    }
}
