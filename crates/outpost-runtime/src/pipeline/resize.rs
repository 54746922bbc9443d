//! Fitting an image to the model's input size.
//!
//! Every resize mode is one operation with different rectangles: a source rectangle of the
//! original image is resampled into a target rectangle of the model input, and the rest of the
//! input is padding. Stretch maps the whole image onto the whole input; letterbox maps the whole
//! image into a centred rectangle that keeps its aspect ratio; centre-crop maps a centred
//! rectangle of the image, with the input's aspect ratio, onto the whole input. The two
//! rectangles, recorded as an [`ImageGeometry`], are all post-processing needs to put boxes back
//! on the original image.
//!
//! The resampler is separable with a triangle (bilinear) kernel that widens when shrinking, as
//! Pillow's and `image`'s do, so a downscale averages every source pixel instead of skipping most
//! of them (aliasing). It runs on interleaved u8 pixels with precomputed weights, several times
//! faster than `image::imageops::resize`, which goes through a boxed kernel per tap.

use outpost_proto::manifest::ResizeMode;

/// How an original image maps onto the model input: `model = original * scale + offset` per axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageGeometry {
    /// Width of the original image in pixels (after EXIF rotation).
    pub width: u32,
    /// Height of the original image in pixels (after EXIF rotation).
    pub height: u32,
    /// Model pixels per original pixel, horizontally.
    pub scale_x: f32,
    /// Model pixels per original pixel, vertically.
    pub scale_y: f32,
    /// Model x of original x = 0 (the left padding in letterbox, negative after a crop).
    pub offset_x: f32,
    /// Model y of original y = 0.
    pub offset_y: f32,
}

impl ImageGeometry {
    /// Maps a point in model-input pixels to original-image pixels, clamped to the image.
    pub fn to_original(&self, x: f32, y: f32) -> (f32, f32) {
        let ox = (x - self.offset_x) / self.scale_x;
        let oy = (y - self.offset_y) / self.scale_y;
        (ox.clamp(0.0, self.width as f32), oy.clamp(0.0, self.height as f32))
    }
}

/// An axis-aligned rectangle of whole pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Which part of the image goes where in the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    /// Rectangle of the original image that is used.
    pub source: Rect,
    /// Rectangle of the model input it is resampled into; the rest is padding.
    pub target: Rect,
}

/// Where an `image` (width, height) lands in a model `input` (width, height); all sizes ≥ 1.
pub(super) fn place(mode: ResizeMode, image: (usize, usize), input: (usize, usize)) -> Placement {
    let (iw, ih) = (image.0.max(1), image.1.max(1));
    let (mw, mh) = (input.0.max(1), input.1.max(1));
    let whole_image = Rect { x: 0, y: 0, width: iw, height: ih };
    let whole_input = Rect { x: 0, y: 0, width: mw, height: mh };
    match mode {
        ResizeMode::Stretch => Placement { source: whole_image, target: whole_input },
        ResizeMode::Letterbox => {
            let scale = (mw as f64 / iw as f64).min(mh as f64 / ih as f64);
            let width = ((iw as f64 * scale).round() as usize).clamp(1, mw);
            let height = ((ih as f64 * scale).round() as usize).clamp(1, mh);
            let target = Rect { x: (mw - width) / 2, y: (mh - height) / 2, width, height };
            Placement { source: whole_image, target }
        }
        ResizeMode::CenterCrop => {
            // Scaling the short side to fit and cropping the centre is the same as cropping the
            // centre at the input's aspect ratio first, and cheaper: only used pixels are resampled.
            let scale = (mw as f64 / iw as f64).max(mh as f64 / ih as f64);
            let width = ((mw as f64 / scale).round() as usize).clamp(1, iw);
            let height = ((mh as f64 / scale).round() as usize).clamp(1, ih);
            let source = Rect { x: (iw - width) / 2, y: (ih - height) / 2, width, height };
            Placement { source, target: whole_input }
        }
    }
}

impl Placement {
    /// The geometry post-processing uses to map model pixels back onto the original image.
    pub fn geometry(&self, image_width: usize, image_height: usize) -> ImageGeometry {
        let scale_x = self.target.width as f64 / self.source.width.max(1) as f64;
        let scale_y = self.target.height as f64 / self.source.height.max(1) as f64;
        ImageGeometry {
            width: u32::try_from(image_width).unwrap_or(u32::MAX),
            height: u32::try_from(image_height).unwrap_or(u32::MAX),
            scale_x: scale_x as f32,
            scale_y: scale_y as f32,
            offset_x: (self.target.x as f64 - self.source.x as f64 * scale_x) as f32,
            offset_y: (self.target.y as f64 - self.source.y as f64 * scale_y) as f32,
        }
    }
}

/// Resampling weights along one axis: output pixel `i` is the weighted sum of source pixels
/// `starts[i] .. starts[i] + counts[i]` with weights `weights[i * stride ..]`.
struct Kernel {
    starts: Vec<usize>,
    counts: Vec<usize>,
    weights: Vec<f32>,
    stride: usize,
}

impl Kernel {
    /// Weights to resample `len` source pixels from `start` (of `full` in the row or column)
    /// into `out` pixels. Taps may reach just outside the used span, as if the whole image were
    /// resized and then cropped; they never reach outside the image.
    fn new(full: usize, start: usize, len: usize, out: usize) -> Kernel {
        let scale = out as f64 / len.max(1) as f64;
        let widen = (1.0 / scale).max(1.0);
        let stride = (2.0 * widen).ceil() as usize + 2;
        let mut k = Kernel {
            starts: Vec::with_capacity(out),
            counts: Vec::with_capacity(out),
            weights: vec![0.0; out * stride],
            stride,
        };
        for (i, ws) in k.weights.chunks_exact_mut(stride).enumerate() {
            let center = start as f64 + (i as f64 + 0.5) / scale;
            let lo = (center - widen).floor().max(0.0) as usize;
            let hi = ((center + widen).ceil() as usize).min(full);
            let n = hi.saturating_sub(lo).min(stride);
            let mut sum = 0.0;
            for (j, w) in ws.iter_mut().take(n).enumerate() {
                let distance = ((lo + j) as f64 + 0.5 - center).abs() / widen;
                let weight = (1.0 - distance).max(0.0);
                *w = weight as f32;
                sum += weight;
            }
            if sum > 0.0 {
                ws.iter_mut().take(n).for_each(|w| *w /= sum as f32);
                k.starts.push(lo);
                k.counts.push(n);
            } else {
                // Only reachable through float rounding at the very edge: take the nearest pixel.
                ws[0] = 1.0;
                k.starts.push((center as usize).min(full.saturating_sub(1)));
                k.counts.push(1);
            }
        }
        k
    }

    /// Source index range `lo..hi` that any output touches.
    fn span(&self) -> (usize, usize) {
        let lo = self.starts.iter().copied().min().unwrap_or(0);
        let hi = self.starts.iter().zip(&self.counts).map(|(s, n)| s + n).max().unwrap_or(0);
        (lo, hi)
    }
}

/// Resamples the `source` rectangle of an interleaved image with `C` channels per pixel
/// (`width` × `height`) to `out_w` × `out_h` pixels. `None` when the buffer or rectangle does not
/// fit the stated size or a size is zero, which the callers rule out.
pub(super) fn resample<const C: usize>(
    pixels: &[u8],
    width: usize,
    height: usize,
    source: Rect,
    out_w: usize,
    out_h: usize,
) -> Option<Vec<u8>> {
    let fits = pixels.len() == width.checked_mul(height)?.checked_mul(C)?
        && source.x.checked_add(source.width)? <= width
        && source.y.checked_add(source.height)? <= height
        && source.width > 0
        && source.height > 0
        && out_w > 0
        && out_h > 0;
    if !fits {
        return None;
    }
    let horizontal = Kernel::new(width, source.x, source.width, out_w);
    let vertical = Kernel::new(height, source.y, source.height, out_h);
    let (row_lo, row_hi) = vertical.span();
    let out_row = out_w * C;

    // Horizontal pass over only the rows the vertical pass reads, into f32 to keep precision.
    let mut rows = vec![0.0f32; (row_hi - row_lo) * out_row];
    for (line, dst) in pixels.chunks_exact(width * C).skip(row_lo).zip(rows.chunks_exact_mut(out_row)) {
        let taps =
            horizontal.starts.iter().zip(&horizontal.counts).zip(horizontal.weights.chunks_exact(horizontal.stride));
        for (((&start, &count), ws), px_out) in taps.zip(dst.chunks_exact_mut(C)) {
            let mut acc = [0.0f32; C];
            let src = line.get(start * C..(start + count) * C)?;
            for (px, &w) in src.chunks_exact(C).zip(ws) {
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += f32::from(v) * w;
                }
            }
            px_out.copy_from_slice(&acc);
        }
    }

    // Vertical pass: each output row is a weighted sum of whole intermediate rows, which the
    // compiler vectorises.
    let mut out = vec![0u8; out_h * out_row];
    let mut acc = vec![0.0f32; out_row];
    let taps = vertical.starts.iter().zip(&vertical.counts).zip(vertical.weights.chunks_exact(vertical.stride));
    for (((&start, &count), ws), dst) in taps.zip(out.chunks_exact_mut(out_row)) {
        acc.fill(0.0);
        let src = rows.get((start - row_lo) * out_row..(start - row_lo + count) * out_row)?;
        for (row, &w) in src.chunks_exact(out_row).zip(ws) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v * w;
            }
        }
        for (o, &a) in dst.iter_mut().zip(&acc) {
            // `as` saturates, so rounding overshoot clamps to 0..=255.
            *o = a.round() as u8;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_keeps_aspect_ratio_and_centres_the_image() {
        let p = place(ResizeMode::Letterbox, (640, 480), (320, 320));
        assert_eq!(p.target, Rect { x: 0, y: 40, width: 320, height: 240 });
        let g = p.geometry(640, 480);
        assert_eq!((g.scale_x, g.scale_y, g.offset_x, g.offset_y), (0.5, 0.5, 0.0, 40.0));
        assert_eq!(g.to_original(160.0, 160.0), (320.0, 240.0));
        // Points in the padding clamp to the image edge.
        assert_eq!(g.to_original(0.0, 0.0), (0.0, 0.0));
        assert_eq!(g.to_original(320.0, 319.0), (640.0, 480.0));
    }

    #[test]
    fn center_crop_uses_the_centre_at_the_input_aspect_ratio() {
        let p = place(ResizeMode::CenterCrop, (640, 480), (224, 224));
        assert_eq!(p.source, Rect { x: 80, y: 0, width: 480, height: 480 });
        assert_eq!(p.target, Rect { x: 0, y: 0, width: 224, height: 224 });
        let g = p.geometry(640, 480);
        let (x, y) = g.to_original(112.0, 112.0);
        assert!((x - 320.0).abs() < 1e-3 && (y - 240.0).abs() < 1e-3, "{x} {y}");
    }

    #[test]
    fn stretch_scales_each_axis_independently() {
        let g = place(ResizeMode::Stretch, (200, 100), (100, 100)).geometry(200, 100);
        assert_eq!((g.scale_x, g.scale_y, g.offset_x, g.offset_y), (0.5, 1.0, 0.0, 0.0));
    }

    #[test]
    fn same_size_resample_is_an_exact_copy() {
        let pixels: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let whole = Rect { x: 0, y: 0, width: 5, height: 4 };
        assert_eq!(resample::<3>(&pixels, 5, 4, whole, 5, 4).unwrap(), pixels);
    }

    #[test]
    fn downscaling_averages_instead_of_skipping_pixels() {
        // A one-pixel checkerboard halved must come out mid-grey, not all black or all white.
        let pixels: Vec<u8> = (0..8 * 8).map(|i| if (i % 8 + i / 8) % 2 == 0 { 255 } else { 0 }).collect();
        let out = resample::<1>(&pixels, 8, 8, Rect { x: 0, y: 0, width: 8, height: 8 }, 4, 4).unwrap();
        assert!(out.iter().all(|&v| (100..=155).contains(&v)), "{out:?}");
    }

    #[test]
    fn upscaling_interpolates_between_pixels() {
        let out = resample::<1>(&[0, 200], 2, 1, Rect { x: 0, y: 0, width: 2, height: 1 }, 4, 1).unwrap();
        assert_eq!(out, vec![0, 50, 150, 200]);
    }

    #[test]
    fn mismatched_buffers_are_refused() {
        let whole = Rect { x: 0, y: 0, width: 4, height: 4 };
        assert!(resample::<3>(&[0; 10], 4, 4, whole, 2, 2).is_none());
        let outside = Rect { x: 2, y: 0, width: 4, height: 4 };
        assert!(resample::<1>(&[0; 16], 4, 4, outside, 2, 2).is_none());
    }
}
