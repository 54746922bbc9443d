//! YOLO box decoding: raw predictions into labelled boxes on the original image.
//!
//! Accepted layouts (the leading batch dimension is optional and must be 1):
//!
//! - `yolov8`: `[1, 4 + C, N]`, for each of N anchors the box centre x, y, width, height, then C
//!   class scores. Some exports transpose it to `[1, N, 4 + C]`; the anchors (8400 at 640 px) far
//!   outnumber the classes, so when the first axis is the longer one it is taken as the boxes axis.
//! - `yolov5`: `[1, N, 5 + C]`, centre x, y, width, height, objectness, then C class scores; a
//!   box's score is objectness × class score.
//!
//! Each box takes its best class (one label per box, the ultralytics default). Coordinates are
//! model-input pixels, as ultralytics exports them. Boxes scoring at least `score_threshold` go
//! through class-wise NMS (see `nms`), then are mapped back through the image's [`ItemMeta`]
//! geometry and clamped to the image; a box that lies wholly in letterbox padding is dropped.

use super::nms::{self, Candidate, Corners};
use super::post::output;
use super::{config, ItemMeta, PipelineError};
use crate::Tensor;
use outpost_proto::manifest::{DetectionFormat, DetectionPost, Manifest};
use outpost_proto::prediction::{BoundingBox, Prediction};

/// Decodes the detection output for one image.
pub(super) fn boxes(
    post: &DetectionPost,
    manifest: &Manifest,
    outputs: &[Tensor],
    meta: &ItemMeta,
) -> Result<Prediction, PipelineError> {
    if !post.score_threshold.is_finite() || !(0.0..=1.0).contains(&post.iou_threshold) {
        return Err(config(format!(
            "post.score_threshold {} must be a number and post.iou_threshold {} must be 0 to 1",
            post.score_threshold, post.iou_threshold
        )));
    }
    if post.max_detections == 0 {
        return Err(config("post.max_detections is 0; it must be at least 1"));
    }
    let out = output(manifest, outputs, post.output.as_deref())?;
    let table = Table::new(post.format, out.shape()).ok_or_else(|| {
        let expected = match post.format {
            DetectionFormat::Yolov8 => "[1, 4 + classes, boxes] (or [1, boxes, 4 + classes])",
            DetectionFormat::Yolov5 => "[1, boxes, 5 + classes]",
        };
        config(format!(
            "post (detection, {:?}): output `{}` has shape {:?}; expected {expected} with at least one class",
            post.format,
            out.name,
            out.shape()
        ))
    })?;
    let values = out.values()?;
    let mut candidates = Vec::new();
    for i in 0..table.boxes {
        let at = |j: usize| table.get(values, i, j);
        let Some((class, class_score)) = (table.first_class..table.attributes)
            .map(|j| (j - table.first_class, at(j)))
            .filter(|(_, s)| !s.is_nan())
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            continue;
        };
        let score = match post.format {
            DetectionFormat::Yolov8 => class_score,
            DetectionFormat::Yolov5 => at(4) * class_score,
        };
        // Written so NaN scores fail the test.
        if !(score >= post.score_threshold && score.is_finite()) {
            continue;
        }
        let (cx, cy, w, h) = (at(0), at(1), at(2), at(3));
        let model = Corners { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 };
        let image = to_image(meta, &model);
        if model.is_empty()
            || image.is_empty()
            || ![model.x1, model.y1, model.x2, model.y2].iter().all(|v| v.is_finite())
        {
            continue;
        }
        candidates.push(Candidate { class, score, model, image });
    }
    let boxes = nms::suppress(candidates, post.iou_threshold, post.max_detections)
        .into_iter()
        .map(|c| BoundingBox {
            index: c.class,
            label: manifest.labels.get(c.class).cloned(),
            score: c.score,
            x1: c.image.x1,
            y1: c.image.y1,
            x2: c.image.x2,
            y2: c.image.y2,
        })
        .collect();
    Ok(Prediction::Detection { boxes })
}

/// Maps a box in model-input pixels onto the original image, clamped to it. Items that are not
/// images keep model coordinates.
fn to_image(meta: &ItemMeta, b: &Corners) -> Corners {
    match meta {
        ItemMeta::Image(g) => {
            let (x1, y1) = g.to_original(b.x1, b.y1);
            let (x2, y2) = g.to_original(b.x2, b.y2);
            Corners { x1, y1, x2, y2 }
        }
        _ => *b,
    }
}

/// Where box `i`'s attribute `j` lives in the flat output.
struct Table {
    boxes: usize,
    attributes: usize,
    /// Attribute index of the first class score.
    first_class: usize,
    /// Attributes of one box are contiguous (`[N, attrs]`) rather than strided (`[attrs, N]`).
    boxes_first: bool,
}

impl Table {
    /// The layout of an output of `shape`, or `None` when the shape cannot hold boxes.
    fn new(format: DetectionFormat, shape: &[usize]) -> Option<Table> {
        let (a, b) = match shape {
            [1, a, b] | [a, b] => (*a, *b),
            _ => return None,
        };
        let (boxes, attributes, boxes_first, first_class) = match format {
            DetectionFormat::Yolov8 if a > b => (a, b, true, 4),
            DetectionFormat::Yolov8 => (b, a, false, 4),
            DetectionFormat::Yolov5 => (a, b, true, 5),
        };
        (attributes > first_class).then_some(Table { boxes, attributes, first_class, boxes_first })
    }

    /// The value, or NaN (which decodes to no box) if the output is shorter than its shape says.
    fn get(&self, values: &[f32], i: usize, j: usize) -> f32 {
        let index = if self.boxes_first { i * self.attributes + j } else { j * self.boxes + i };
        values.get(index).copied().unwrap_or(f32::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::manifest;
    use crate::pipeline::{preprocess, ImageGeometry};
    use ::image::{ImageBuffer, ImageFormat, Rgb, RgbImage};
    use outpost_proto::manifest::{ImagePre, PreProcess, ResizeMode};
    use tract_onnx::prelude::Tensor;

    fn post(format: DetectionFormat) -> DetectionPost {
        DetectionPost { output: None, format, score_threshold: 0.25, iou_threshold: 0.45, max_detections: 100 }
    }

    /// A YOLOv8 output `[1, 4 + classes, N]` from (cx, cy, w, h, class, score) rows, padded with
    /// empty anchors so that, as in real models, anchors outnumber attributes.
    fn yolov8(classes: usize, rows: &[(f32, f32, f32, f32, usize, f32)]) -> Tensor {
        let n = rows.len().max(4 + classes + 1);
        let mut data = vec![0.0f32; (4 + classes) * n];
        for (i, &(cx, cy, w, h, class, score)) in rows.iter().enumerate() {
            for (j, v) in [cx, cy, w, h].into_iter().enumerate() {
                data[j * n + i] = v;
            }
            data[(4 + class) * n + i] = score;
        }
        Tensor::from_shape(&[1, 4 + classes, n], &data).unwrap()
    }

    fn decoded(p: Prediction) -> Vec<BoundingBox> {
        match p {
            Prediction::Detection { boxes } => boxes,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn yolov8_nms_suppresses_same_class_overlaps_but_keeps_other_classes() {
        let m = manifest("detection", &["person", "bike"]);
        let out = yolov8(
            2,
            &[
                (50.0, 50.0, 20.0, 20.0, 0, 0.9),
                (51.0, 51.0, 20.0, 20.0, 0, 0.8), // duplicate person
                (50.0, 50.0, 20.0, 20.0, 1, 0.7), // bike in the same place
                (10.0, 10.0, 4.0, 4.0, 0, 0.1),   // below the score threshold
            ],
        );
        let boxes = decoded(boxes(&post(DetectionFormat::Yolov8), &m, &[out], &ItemMeta::Raw).unwrap());
        let summary: Vec<(usize, Option<&str>, f32)> =
            boxes.iter().map(|b| (b.index, b.label.as_deref(), b.score)).collect();
        assert_eq!(summary, vec![(0, Some("person"), 0.9), (1, Some("bike"), 0.7)]);
        assert_eq!((boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2), (40.0, 40.0, 60.0, 60.0));
    }

    #[test]
    fn transposed_yolov8_output_decodes_the_same() {
        let m = manifest("detection", &[]);
        let rows = [(50.0, 50.0, 20.0, 20.0, 1, 0.9), (10.0, 10.0, 8.0, 8.0, 0, 0.6)];
        let standard = yolov8(2, &rows);
        let transposed = standard.clone().permute_axes(&[0, 2, 1]).unwrap();
        assert_eq!(transposed.shape(), &[1, 7, 6]);
        let a = decoded(boxes(&post(DetectionFormat::Yolov8), &m, &[standard], &ItemMeta::Raw).unwrap());
        let b = decoded(boxes(&post(DetectionFormat::Yolov8), &m, &[transposed], &ItemMeta::Raw).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn yolov5_score_is_objectness_times_class_score() {
        let m = manifest("detection", &[]);
        // [1, 2, 5 + 2]: a confident class with low objectness, and a good box.
        let data = [50.0, 50.0, 10.0, 10.0, 0.2, 0.9, 0.1, 20.0, 20.0, 10.0, 10.0, 0.9, 0.1, 0.8];
        let out = Tensor::from_shape(&[1, 2, 7], &data).unwrap();
        let boxes = decoded(boxes(&post(DetectionFormat::Yolov5), &m, &[out], &ItemMeta::Raw).unwrap());
        assert_eq!(boxes.len(), 1);
        assert_eq!(boxes[0].index, 1);
        assert!((boxes[0].score - 0.72).abs() < 1e-6);
    }

    #[test]
    fn malformed_outputs_are_config_errors_not_panics() {
        let m = manifest("detection", &[]);
        let shapes: [&[usize]; 5] = [&[10], &[1, 4, 10], &[2, 6, 10], &[1, 1, 6, 10], &[1, 0, 0]];
        for shape in shapes {
            let t = Tensor::zero::<f32>(shape).unwrap();
            let err = boxes(&post(DetectionFormat::Yolov8), &m, &[t], &ItemMeta::Raw).unwrap_err();
            assert!(!err.is_client_error(), "{shape:?}");
        }
        let t = Tensor::zero::<f32>(&[1, 10, 5]).unwrap();
        assert!(boxes(&post(DetectionFormat::Yolov5), &m, &[t], &ItemMeta::Raw).is_err());
        let nan = Tensor::from_shape(&[1, 5, 5], &[f32::NAN; 25]).unwrap();
        assert!(decoded(boxes(&post(DetectionFormat::Yolov8), &m, &[nan], &ItemMeta::Raw).unwrap()).is_empty());
    }

    #[test]
    fn boxes_map_back_through_the_letterbox_to_original_pixels() {
        // A white rectangle on a dark 640x480 image, letterboxed to 320x320.
        let (x1, y1, x2, y2) = (100u32, 150u32, 300u32, 400u32);
        let img: RgbImage = ImageBuffer::from_fn(640, 480, |x, y| {
            if (x1..x2).contains(&x) && (y1..y2).contains(&y) {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        });
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, ImageFormat::Png).unwrap();
        let mut pre: ImagePre =
            toml::from_str("width = 320\nheight = 320\ncolor = \"gray\"\ndtype = \"UINT8\"").unwrap();
        pre.resize = ResizeMode::Letterbox;
        let prepared = preprocess(&PreProcess::Image(pre), &png.into_inner()).unwrap();
        let (tensor, meta) = &prepared.items[0];
        // Find the rectangle as the model sees it, as a perfect detector would report it.
        let pixels = crate::tensor::values::<u8>(tensor).unwrap();
        let bright: Vec<(usize, usize)> =
            (0..320 * 320).filter(|&i| pixels[i] > 127).map(|i| (i % 320, i / 320)).collect();
        let min_x = bright.iter().map(|p| p.0).min().unwrap() as f32;
        let max_x = bright.iter().map(|p| p.0).max().unwrap() as f32 + 1.0;
        let min_y = bright.iter().map(|p| p.1).min().unwrap() as f32;
        let max_y = bright.iter().map(|p| p.1).max().unwrap() as f32 + 1.0;
        let out = yolov8(1, &[((min_x + max_x) / 2.0, (min_y + max_y) / 2.0, max_x - min_x, max_y - min_y, 0, 0.9)]);
        let got = decoded(boxes(&post(DetectionFormat::Yolov8), &manifest("detection", &[]), &[out], meta).unwrap());
        let b = &got[0];
        for (found, truth) in [(b.x1, x1), (b.y1, y1), (b.x2, x2), (b.y2, y2)] {
            assert!((found - truth as f32).abs() <= 2.0, "{b:?} vs ({x1}, {y1}, {x2}, {y2})");
        }
    }

    #[test]
    fn boxes_in_the_padding_are_dropped_and_edges_are_clamped() {
        let g = ImageGeometry { width: 640, height: 480, scale_x: 0.5, scale_y: 0.5, offset_x: 0.0, offset_y: 40.0 };
        let m = manifest("detection", &[]);
        let out = yolov8(1, &[(160.0, 10.0, 40.0, 20.0, 0, 0.9), (5.0, 100.0, 30.0, 20.0, 0, 0.8)]);
        let got = decoded(boxes(&post(DetectionFormat::Yolov8), &m, &[out], &ItemMeta::Image(g)).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].x1, got[0].y1, got[0].x2, got[0].y2), (0.0, 100.0, 40.0, 140.0));
    }
}
