//! Greedy, class-wise non-maximum suppression.
//!
//! Candidates are visited best first; each is kept unless it overlaps a kept box of the same
//! class by more than the IoU threshold. Boxes of different classes never suppress each other (a
//! rider and the bicycle under them are both reported). Stopping once `max` boxes are kept bounds
//! the work to candidates × max rather than candidates², which matters when a low score threshold
//! lets most of YOLO's 8400 anchors through.

/// A box by its corners, `x1 <= x2` and `y1 <= y2` for a non-empty box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Corners {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl Corners {
    fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    /// Whether the box has no area (or NaN corners).
    pub fn is_empty(&self) -> bool {
        !(self.x2 > self.x1 && self.y2 > self.y1)
    }
}

/// Intersection over union; 0 for boxes without area.
pub(super) fn iou(a: &Corners, b: &Corners) -> f32 {
    let overlap = Corners { x1: a.x1.max(b.x1), y1: a.y1.max(b.y1), x2: a.x2.min(b.x2), y2: a.y2.min(b.y2) };
    let intersection = overlap.area();
    let union = a.area() + b.area() - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

/// A decoded box before suppression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Candidate {
    /// Class index.
    pub class: usize,
    /// Score; finite.
    pub score: f32,
    /// Corners in model-input pixels, where suppression is decided (as the model's authors do).
    pub model: Corners,
    /// Corners in original-image pixels, what the caller gets.
    pub image: Corners,
}

/// The candidates that survive suppression, best first, at most `max` of them.
pub(super) fn suppress(mut candidates: Vec<Candidate>, iou_threshold: f32, max: usize) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() >= max {
            break;
        }
        if !kept.iter().any(|k| k.class == c.class && iou(&k.model, &c.model) > iou_threshold) {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corners(x1: f32, y1: f32, x2: f32, y2: f32) -> Corners {
        Corners { x1, y1, x2, y2 }
    }

    fn candidate(class: usize, score: f32, b: Corners) -> Candidate {
        Candidate { class, score, model: b, image: b }
    }

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = corners(0.0, 0.0, 10.0, 10.0);
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &corners(20.0, 20.0, 30.0, 30.0)), 0.0);
        assert!((iou(&a, &corners(5.0, 0.0, 15.0, 10.0)) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&corners(0.0, 0.0, 0.0, 0.0), &corners(0.0, 0.0, 0.0, 0.0)), 0.0);
    }

    #[test]
    fn overlapping_boxes_of_one_class_collapse_to_the_best() {
        let kept = suppress(
            vec![
                candidate(0, 0.6, corners(1.0, 1.0, 11.0, 11.0)),
                candidate(0, 0.9, corners(0.0, 0.0, 10.0, 10.0)),
                candidate(0, 0.8, corners(50.0, 50.0, 60.0, 60.0)),
            ],
            0.5,
            10,
        );
        assert_eq!(kept.iter().map(|c| c.score).collect::<Vec<_>>(), vec![0.9, 0.8]);
    }

    #[test]
    fn different_classes_do_not_suppress_each_other() {
        let b = corners(0.0, 0.0, 10.0, 10.0);
        let kept = suppress(vec![candidate(0, 0.9, b), candidate(1, 0.8, b)], 0.5, 10);
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn at_most_max_boxes_are_kept() {
        let many =
            (0..100).map(|i| candidate(0, i as f32, corners(i as f32 * 20.0, 0.0, i as f32 * 20.0 + 10.0, 10.0)));
        let kept = suppress(many.collect(), 0.5, 3);
        assert_eq!(kept.iter().map(|c| c.score).collect::<Vec<_>>(), vec![99.0, 98.0, 97.0]);
    }
}
