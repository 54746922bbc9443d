//! Images: JPEG or PNG bytes into one `[1, C, H, W]` or `[1, H, W, C]` tensor.
//!
//! Decoding is bounded ([`MAX_SIDE`] pixels per side, [`MAX_DECODE_BYTES`] allocated), so a small
//! file that claims to be a huge image (a decompression bomb) is refused before memory is spent
//! on it. EXIF orientation is applied, so the model sees the picture upright as a viewer shows it
//! and boxes come back in those coordinates. Alpha is dropped, not composited.
//!
//! `UINT8` tensors carry the pixels as they are. Float tensors carry `(x * scale - mean[c]) /
//! std[c]`, with `mean` and `std` in the tensor's channel order (for `bgr`, `mean[0]` is blue's);
//! one value, or three equal values for `gray`, applies to every channel.

use super::resize::{self, Placement};
use super::{client, config, ItemMeta, PipelineError};
use crate::Tensor;
use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};
use outpost_proto::manifest::{ColorOrder, ImageLayout, ImagePre};
use outpost_proto::DType;
use std::io::Cursor;
use tract_onnx::prelude::DatumType;

/// Largest accepted image side in pixels.
const MAX_SIDE: u32 = 8192;
/// Most memory the decoder may allocate (an 8192 x 8192 RGB image is 192 MiB).
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Decodes `body` and fits it to the model input described by `pre`.
pub(super) fn prepare(pre: &ImagePre, body: &[u8]) -> Result<Vec<(Tensor, ItemMeta)>, PipelineError> {
    let input = InputImage::from_pre(pre)?;
    let img = decode(body)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(client("image: the image has no pixels"));
    }
    let placement = resize::place(pre.resize, (width, height), (input.width, input.height));
    let pixels = match input.color {
        ColorOrder::Gray => img.into_luma8().into_raw(),
        ColorOrder::Rgb | ColorOrder::Bgr => img.into_rgb8().into_raw(),
    };
    let canvas = input.canvas(&pixels, width, height, &placement)?;
    let tensor = input.tensor(&canvas)?;
    Ok(vec![(tensor, ItemMeta::Image(placement.geometry(width, height)))])
}

/// Decodes a JPEG or PNG within the size limits and turns it upright.
fn decode(body: &[u8]) -> Result<DynamicImage, PipelineError> {
    if body.is_empty() {
        return Err(client("image: the request body is empty; send a JPEG or PNG file"));
    }
    let mut reader = ImageReader::new(Cursor::new(body))
        .with_guessed_format()
        .map_err(|e| client(format!("image: cannot read the body: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
        Some(other) => {
            return Err(client(format!("image: {other:?} images are not supported; send JPEG or PNG")));
        }
        None => return Err(client("image: the body is neither a JPEG nor a PNG file (unrecognised header)")),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    // Broken EXIF should not reject an image that decodes fine; it is just not rotated.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    Ok(img)
}

fn decode_error(e: ImageError) -> PipelineError {
    match e {
        ImageError::Limits(_) => client(format!(
            "image: too large to decode ({e}); images may be at most {MAX_SIDE}x{MAX_SIDE} pixels and \
             {} MiB decoded",
            MAX_DECODE_BYTES >> 20
        )),
        _ => client(format!("image: cannot decode: {e}")),
    }
}

/// The model input an image is fitted to, checked once against the manifest.
struct InputImage {
    width: usize,
    height: usize,
    color: ColorOrder,
    layout: ImageLayout,
    pad: u8,
    /// Element type of the tensor; float types are normalised.
    dtype: DType,
    /// Per channel, the normalised value of each pixel value 0..=255 (empty for `UINT8`).
    table: Vec<[f32; 256]>,
}

impl InputImage {
    fn from_pre(pre: &ImagePre) -> Result<InputImage, PipelineError> {
        let side = |name: &str, v: u32| match v {
            1..=MAX_SIDE => Ok(v as usize),
            _ => Err(config(format!("pre.{name} is {v}; an image input must be 1 to {MAX_SIDE} pixels"))),
        };
        let channels = if pre.color == ColorOrder::Gray { 1 } else { 3 };
        let table = match pre.dtype {
            DType::U8 => Vec::new(),
            DType::F16 | DType::F32 | DType::F64 => normalisation_table(pre, channels)?,
            other => {
                return Err(config(format!(
                    "pre.dtype is {other}; an image input must be UINT8 (raw pixels) or FP32 (normalised)"
                )))
            }
        };
        Ok(InputImage {
            width: side("width", pre.width)?,
            height: side("height", pre.height)?,
            color: pre.color,
            layout: pre.layout,
            pad: pre.pad_value,
            dtype: pre.dtype,
            table,
        })
    }

    fn channels(&self) -> usize {
        if self.color == ColorOrder::Gray {
            1
        } else {
            3
        }
    }

    /// The model input as interleaved u8 pixels in the tensor's channel order: padding, with the
    /// resampled image in its target rectangle.
    fn canvas(
        &self,
        pixels: &[u8],
        width: usize,
        height: usize,
        placement: &Placement,
    ) -> Result<Vec<u8>, PipelineError> {
        let c = self.channels();
        let t = placement.target;
        let resized = match c {
            1 => resize::resample::<1>(pixels, width, height, placement.source, t.width, t.height),
            _ => resize::resample::<3>(pixels, width, height, placement.source, t.width, t.height),
        }
        .ok_or_else(|| config(format!("image: decoded pixels do not match the {width}x{height} image")))?;
        let mut canvas = vec![self.pad; self.width * self.height * c];
        let rows = canvas.chunks_exact_mut(self.width * c).skip(t.y);
        for (dst, src) in rows.zip(resized.chunks_exact(t.width * c)) {
            if let Some(dst) = dst.get_mut(t.x * c..(t.x + t.width) * c) {
                dst.copy_from_slice(src);
            }
        }
        if self.color == ColorOrder::Bgr {
            canvas.chunks_exact_mut(3).for_each(|px| px.swap(0, 2));
        }
        Ok(canvas)
    }

    /// Lays the canvas out as the model's tensor.
    fn tensor(&self, canvas: &[u8]) -> Result<Tensor, PipelineError> {
        let c = self.channels();
        let shape = match self.layout {
            ImageLayout::Nchw => [1, c, self.height, self.width],
            ImageLayout::Nhwc => [1, self.height, self.width, c],
        };
        let built = if self.table.is_empty() {
            Tensor::from_shape::<u8>(&shape, &self.arrange(canvas, |_, v| v))
        } else {
            let values = self.arrange(canvas, |ch, v| self.table.get(ch).map_or(0.0, |t| t[usize::from(v)]));
            Tensor::from_shape::<f32>(&shape, &values).and_then(|t| match self.dtype {
                DType::F16 => t.cast_to_dt(DatumType::F16).map(|t| t.into_owned()),
                DType::F64 => t.cast_to_dt(DatumType::F64).map(|t| t.into_owned()),
                _ => Ok(t),
            })
        };
        built.map_err(|e| config(format!("image: building the {shape:?} input tensor: {e}")))
    }

    /// Maps every canvas value through `f(channel, value)` in the tensor's element order.
    fn arrange<T>(&self, canvas: &[u8], f: impl Fn(usize, u8) -> T) -> Vec<T> {
        let c = self.channels();
        match self.layout {
            ImageLayout::Nhwc => canvas.iter().zip((0..c).cycle()).map(|(&v, ch)| f(ch, v)).collect(),
            ImageLayout::Nchw => {
                let mut out = Vec::with_capacity(canvas.len());
                for ch in 0..c {
                    out.extend(canvas.iter().skip(ch).step_by(c).map(|&v| f(ch, v)));
                }
                out
            }
        }
    }
}

/// Per channel, `(v * scale - mean) / std` for every pixel value `v`, so normalising an image
/// is one table lookup per value.
fn normalisation_table(pre: &ImagePre, channels: usize) -> Result<Vec<[f32; 256]>, PipelineError> {
    if !pre.scale.is_finite() {
        return Err(config(format!("pre.scale is {}; it must be a finite number", pre.scale)));
    }
    let mean = per_channel("mean", &pre.mean, channels)?;
    let std = per_channel("std", &pre.std, channels)?;
    if let Some(bad) = std.iter().find(|s| **s == 0.0) {
        return Err(config(format!("pre.std has {bad}; a standard deviation must not be zero")));
    }
    Ok(mean
        .iter()
        .zip(&std)
        .map(|(m, s)| {
            let mut row = [0.0f32; 256];
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 * pre.scale - m) / s;
            }
            row
        })
        .collect())
}

/// One value per channel, from `values` given per channel or as one value for all.
fn per_channel(name: &str, values: &[f32], channels: usize) -> Result<Vec<f32>, PipelineError> {
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(config(format!("pre.{name} has {bad}; every value must be a finite number")));
    }
    match values {
        [one] => Ok(vec![*one; channels]),
        _ if values.len() == channels => Ok(values.to_vec()),
        // The defaults have three values; for gray they are fine as long as they agree.
        [first, rest @ ..] if channels == 1 && rest.iter().all(|v| v == first) => Ok(vec![*first]),
        _ => Err(config(format!(
            "pre.{name} has {} values but the image has {channels} channel(s); give one value per channel",
            values.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{ImageBuffer, Rgb, RgbImage};
    use outpost_proto::manifest::ResizeMode;

    fn encode_png(img: &RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn encode_jpeg(img: &RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn pre(width: u32, height: u32) -> ImagePre {
        toml::from_str(&format!("width = {width}\nheight = {height}")).unwrap()
    }

    fn run(pre: &ImagePre, body: &[u8]) -> (Vec<usize>, Tensor, ItemMeta) {
        let mut items = prepare(pre, body).unwrap();
        assert_eq!(items.len(), 1);
        let (t, meta) = items.remove(0);
        (t.shape().to_vec(), t, meta)
    }

    /// A 4x2 image whose pixel (x, y) is (10x + y, 100, 200).
    fn ramp() -> RgbImage {
        ImageBuffer::from_fn(4, 2, |x, y| Rgb([(10 * x + y) as u8, 100, 200]))
    }

    #[test]
    fn nchw_puts_each_channel_in_its_own_plane() {
        let mut p = pre(4, 2);
        p.dtype = DType::U8;
        let (shape, t, _) = run(&p, &encode_png(&ramp()));
        assert_eq!(shape, vec![1, 3, 2, 4]);
        let v = crate::tensor::values::<u8>(&t).unwrap();
        assert_eq!(&v[..8], &[0, 10, 20, 30, 1, 11, 21, 31]);
        assert!(v[8..16].iter().all(|&g| g == 100) && v[16..].iter().all(|&b| b == 200));
    }

    #[test]
    fn nhwc_interleaves_channels_and_bgr_reverses_them() {
        let mut p = pre(4, 2);
        p.dtype = DType::U8;
        p.layout = ImageLayout::Nhwc;
        let (shape, t, _) = run(&p, &encode_png(&ramp()));
        assert_eq!(shape, vec![1, 2, 4, 3]);
        assert_eq!(&crate::tensor::values::<u8>(&t).unwrap()[..6], &[0, 100, 200, 10, 100, 200]);
        p.color = ColorOrder::Bgr;
        let (_, t, _) = run(&p, &encode_png(&ramp()));
        assert_eq!(&crate::tensor::values::<u8>(&t).unwrap()[..6], &[200, 100, 0, 200, 100, 10]);
    }

    #[test]
    fn float_inputs_are_scaled_and_normalised_per_channel() {
        let mut p = pre(4, 2);
        p.mean = vec![0.5, 0.0, 1.0];
        p.std = vec![0.5, 1.0, 2.0];
        let (_, t, _) = run(&p, &encode_png(&ramp()));
        let v = crate::tensor::values::<f32>(&t).unwrap();
        let expect = |x: f32, c: usize| (x / 255.0 - p.mean[c]) / p.std[c];
        assert!((v[1] - expect(10.0, 0)).abs() < 1e-6);
        assert!((v[8] - expect(100.0, 1)).abs() < 1e-6);
        assert!((v[16] - expect(200.0, 2)).abs() < 1e-6);
    }

    #[test]
    fn gray_gives_one_channel_and_accepts_the_default_three_equal_means() {
        let mut p = pre(4, 2);
        p.color = ColorOrder::Gray;
        let (shape, _, _) = run(&p, &encode_png(&ramp()));
        assert_eq!(shape, vec![1, 1, 2, 4]);
        p.mean = vec![0.1, 0.2, 0.3];
        let err = prepare(&p, &encode_png(&ramp())).unwrap_err();
        assert!(!err.is_client_error() && err.to_string().contains("pre.mean"), "{err}");
    }

    #[test]
    fn letterbox_pads_and_records_where_the_image_went() {
        let mut p = pre(8, 8);
        p.resize = ResizeMode::Letterbox;
        p.dtype = DType::U8;
        p.layout = ImageLayout::Nhwc;
        let white: RgbImage = ImageBuffer::from_pixel(8, 4, Rgb([255, 255, 255]));
        let (_, t, meta) = run(&p, &encode_png(&white));
        let v = crate::tensor::values::<u8>(&t).unwrap();
        let row = |y: usize| &v[y * 8 * 3..(y + 1) * 8 * 3];
        assert!(row(1).iter().all(|&x| x == 114) && row(6).iter().all(|&x| x == 114));
        assert!(row(2).iter().all(|&x| x == 255) && row(5).iter().all(|&x| x == 255));
        let ItemMeta::Image(g) = meta else { panic!("{meta:?}") };
        assert_eq!((g.width, g.height, g.offset_y, g.scale_y), (8, 4, 2.0, 1.0));
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // Left third red, middle green, right third blue: a square crop sees only green.
        let img: RgbImage = ImageBuffer::from_fn(30, 10, |x, _| match x {
            0..10 => Rgb([255, 0, 0]),
            10..20 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let mut p = pre(4, 4);
        p.resize = ResizeMode::CenterCrop;
        p.dtype = DType::U8;
        let (_, t, _) = run(&p, &encode_png(&img));
        let v = crate::tensor::values::<u8>(&t).unwrap();
        // Edge columns blend with the neighbouring stripes, as resizing the whole image and then
        // cropping would; the inner columns are pure green.
        for y in 0..4 {
            for x in 1..3 {
                assert_eq!((v[y * 4 + x], v[16 + y * 4 + x], v[32 + y * 4 + x]), (0, 255, 0), "{v:?}");
            }
        }
    }

    #[test]
    fn jpeg_decodes_too() {
        let img: RgbImage = ImageBuffer::from_pixel(16, 16, Rgb([50, 100, 150]));
        let (_, t, _) = run(&pre(8, 8), &encode_jpeg(&img));
        let v = crate::tensor::values::<f32>(&t).unwrap();
        assert!((v[0] * 255.0 - 50.0).abs() < 4.0, "{}", v[0] * 255.0);
    }

    #[test]
    fn garbage_empty_and_unsupported_bodies_are_client_errors() {
        for body in [&b""[..], b"hello", b"GIF89a\x01\x00\x01\x00"] {
            let err = prepare(&pre(8, 8), body).unwrap_err();
            assert!(err.is_client_error(), "{err}");
        }
        let png = encode_png(&ramp());
        let err = prepare(&pre(8, 8), &png[..png.len() / 2]).unwrap_err();
        assert!(err.is_client_error(), "{err}");
    }

    #[test]
    fn a_decompression_bomb_is_refused_by_size() {
        // A valid PNG header declaring 100000 x 100000 pixels, with no data behind it.
        let mut body = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        let ihdr = [&100_000u32.to_be_bytes()[..], &100_000u32.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
        let crc = crc32(&[&b"IHDR"[..], &ihdr].concat());
        body.extend_from_slice(&ihdr);
        body.extend_from_slice(&crc.to_be_bytes());
        let err = prepare(&pre(8, 8), &body).unwrap_err();
        assert!(err.is_client_error() && err.to_string().contains("too large"), "{err}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn bad_manifest_values_are_config_errors() {
        let png = encode_png(&ramp());
        let mut p = pre(0, 8);
        assert!(!prepare(&p, &png).unwrap_err().is_client_error());
        p = pre(8, 8);
        p.dtype = DType::I32;
        assert!(!prepare(&p, &png).unwrap_err().is_client_error());
        p = pre(8, 8);
        p.std = vec![1.0, 0.0, 1.0];
        assert!(!prepare(&p, &png).unwrap_err().is_client_error());
    }

    /// `cargo test --release -p outpost-runtime letterbox_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run in release"]
    fn letterbox_timing_640x480_jpeg_to_320_f32_nchw() {
        let img: RgbImage =
            ImageBuffer::from_fn(640, 480, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]));
        let jpeg = encode_jpeg(&img);
        let mut p = pre(320, 320);
        p.resize = ResizeMode::Letterbox;
        let runs = 50;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            prepare(&p, &jpeg).unwrap();
        }
        let total = started.elapsed() / runs;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            decode(&jpeg).unwrap();
        }
        let decode_only = started.elapsed() / runs;
        println!("640x480 JPEG -> 320x320 letterbox FP32 NCHW: {total:?} per image ({decode_only:?} of it decoding)");
    }
}
