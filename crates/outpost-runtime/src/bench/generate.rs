//! Deterministic synthetic inputs for a model: what benchmarks time and self-tests record when
//! no real data is at hand.
//!
//! Integers are the delicate part: most integer inputs of real models are indices (token ids,
//! token types, class ids), and a value past the end of the table they index crashes tract and
//! fails ONNX Runtime. So integers are drawn from the input's [index range](crate::indices) when
//! the graph proves one, and are 0 otherwise.

use crate::backend::IoSpec;
use crate::indices::IndexRange;
use crate::{RuntimeError, Tensor};
use outpost_proto::DType;
use std::collections::BTreeMap;
use tract_onnx::prelude::{tract_ndarray, Datum};
use tract_onnx::tract_core::internal::f16;

/// Largest generated input tensor, in bytes.
const MAX_GENERATED_BYTES: usize = 1 << 30;

/// splitmix64: tiny, seedable and good enough for benchmark inputs; no dependency needed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn signed_unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// Uniform in `lo..=hi` (up to a modulo bias far below what a benchmark can notice); `lo` when
    /// the range is empty.
    fn within(&mut self, lo: i64, hi: i64) -> i64 {
        let Some(span) = hi.checked_sub(lo).filter(|s| *s >= 0) else { return lo };
        let offset = self.next() % (span as u64 + 1);
        lo.wrapping_add(offset as i64)
    }
}

/// Deterministic inputs for `specs` as [`generate_inputs_in`] makes them, with every dimension
/// that varies per request set to 1.
pub fn generate_inputs(
    specs: &[IoSpec],
    ranges: &BTreeMap<String, IndexRange>,
    seed: u64,
) -> Result<Vec<Tensor>, RuntimeError> {
    let ones = |spec: &IoSpec| spec.shape.iter().map(|d| d.unwrap_or(1)).collect();
    generate_inputs_in(specs, &ones, ranges, seed)
}

/// Deterministic inputs for `specs` of the shapes `shape` gives: floats uniform in [-1, 1),
/// integers uniform in their index range (0 for integers without one: a length, a flag or a
/// class id is rarely wrong at 0, where any other guess can overrun a table), random bools,
/// strings `"x"`.
pub fn generate_inputs_in(
    specs: &[IoSpec],
    shape: &dyn Fn(&IoSpec) -> Vec<usize>,
    ranges: &BTreeMap<String, IndexRange>,
    seed: u64,
) -> Result<Vec<Tensor>, RuntimeError> {
    let mut rng = SplitMix(seed);
    specs.iter().map(|spec| generate_one(spec, &shape(spec), ranges.get(&spec.name), &mut rng)).collect()
}

fn generate_one(
    spec: &IoSpec,
    shape: &[usize],
    range: Option<&IndexRange>,
    rng: &mut SplitMix,
) -> Result<Tensor, RuntimeError> {
    let bad = |e: String| RuntimeError::BadInput { tensor: spec.name.clone(), reason: e };
    // Shapes come from the model file: a fixed dimension in the billions must fail, not abort.
    let n = shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    let element_bytes = spec.dtype.size_of().unwrap_or(std::mem::size_of::<String>());
    let Some(n) = n.filter(|n| n.saturating_mul(element_bytes) <= MAX_GENERATED_BYTES) else {
        return Err(bad(format!(
            "shape {shape:?} needs more than {} MiB of generated input",
            MAX_GENERATED_BYTES >> 20
        )));
    };
    fn build<T: Datum>(shape: &[usize], data: Vec<T>) -> Result<Tensor, String> {
        tract_ndarray::ArrayD::from_shape_vec(shape, data).map(Tensor::from).map_err(|e| e.to_string())
    }
    // A table longer than the input type can count is indexed only as far as the type reaches.
    fn ints<T: Datum + TryFrom<i64>>(
        n: usize,
        range: Option<&IndexRange>,
        type_max: i64,
        rng: &mut SplitMix,
    ) -> Result<Vec<T>, String> {
        (0..n)
            .map(|_| {
                let v = range.map_or(0, |r| rng.within(r.min, r.max.min(type_max)));
                T::try_from(v).map_err(|_| format!("index {v} does not fit the input's {:?} type", T::datum_type()))
            })
            .collect()
    }
    let tensor = match spec.dtype {
        DType::F32 => build(shape, (0..n).map(|_| rng.signed_unit() as f32).collect()),
        DType::F64 => build(shape, (0..n).map(|_| rng.signed_unit()).collect()),
        DType::F16 => build(shape, (0..n).map(|_| f16::from_f64(rng.signed_unit())).collect()),
        DType::Bool => build(shape, (0..n).map(|_| rng.next() & 1 == 1).collect()),
        DType::U8 => ints::<u8>(n, range, u8::MAX.into(), rng).and_then(|d| build(shape, d)),
        DType::U16 => ints::<u16>(n, range, u16::MAX.into(), rng).and_then(|d| build(shape, d)),
        DType::U32 => ints::<u32>(n, range, u32::MAX.into(), rng).and_then(|d| build(shape, d)),
        DType::U64 => ints::<u64>(n, range, i64::MAX, rng).and_then(|d| build(shape, d)),
        DType::I8 => ints::<i8>(n, range, i8::MAX.into(), rng).and_then(|d| build(shape, d)),
        DType::I16 => ints::<i16>(n, range, i16::MAX.into(), rng).and_then(|d| build(shape, d)),
        DType::I32 => ints::<i32>(n, range, i32::MAX.into(), rng).and_then(|d| build(shape, d)),
        DType::I64 => ints::<i64>(n, range, i64::MAX, rng).and_then(|d| build(shape, d)),
        DType::Bytes => build(shape, vec!["x".to_string(); n]),
    };
    tensor.map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::values;

    fn spec(name: &str, dtype: DType, shape: Vec<Option<usize>>) -> IoSpec {
        IoSpec { name: name.into(), dtype, shape }
    }

    fn range(max: i64) -> IndexRange {
        IndexRange { min: 0, max, allow_negative: true, source: "rows of `t` (Gather)".into() }
    }

    #[test]
    fn generated_inputs_are_deterministic_and_fill_variable_dims_with_one() {
        let specs = [
            spec("x", DType::F32, vec![None, Some(64)]),
            spec("ids", DType::I64, vec![Some(8)]),
            spec("mask", DType::Bool, vec![]),
        ];
        let none = BTreeMap::new();
        let a = generate_inputs(&specs, &none, 1).unwrap();
        assert_eq!(a, generate_inputs(&specs, &none, 1).unwrap());
        assert_ne!(a, generate_inputs(&specs, &none, 2).unwrap());
        assert_eq!((a[0].shape(), a[1].shape(), a[2].shape()), (&[1, 64][..], &[8][..], &[][..]));
        let x = values::<f32>(&a[0]).unwrap();
        assert!(x.iter().all(|v| (-1.0..1.0).contains(v)) && x.iter().any(|v| *v < 0.0));
    }

    #[test]
    fn integers_are_drawn_from_their_index_range_and_are_zero_without_one() {
        let specs = [
            spec("input_ids", DType::I64, vec![Some(4096)]),
            spec("token_type_ids", DType::I32, vec![Some(4096)]),
            spec("lengths", DType::I64, vec![Some(64)]),
        ];
        let ranges = BTreeMap::from([("input_ids".to_string(), range(29)), ("token_type_ids".to_string(), range(1))]);
        let t = generate_inputs(&specs, &ranges, 7).unwrap();
        let ids = values::<i64>(&t[0]).unwrap();
        assert!(ids.iter().all(|v| (0..=29).contains(v)), "{ids:?}");
        // 4096 draws from 30 values: every value, both ends included, shows up.
        assert!((0..=29).all(|v| ids.contains(&v)));
        let types = values::<i32>(&t[1]).unwrap();
        assert!(types.iter().all(|v| (0..=1).contains(v)) && types.contains(&0) && types.contains(&1));
        assert!(values::<i64>(&t[2]).unwrap().iter().all(|v| *v == 0));
    }

    #[test]
    fn a_table_longer_than_the_input_type_is_indexed_as_far_as_the_type_reaches() {
        let specs = [spec("ids", DType::U8, vec![Some(2048)]), spec("empty", DType::I64, vec![Some(4)])];
        let ranges = BTreeMap::from([("ids".to_string(), range(999)), ("empty".to_string(), range(-1))]);
        let t = generate_inputs(&specs, &ranges, 3).unwrap();
        assert!(values::<u8>(&t[0]).unwrap().iter().any(|v| *v > 200));
        // A zero-row table has no valid index; generation still succeeds (the model will say why).
        assert_eq!(values::<i64>(&t[1]).unwrap(), &[0; 4]);
    }

    #[test]
    fn shapes_come_from_the_given_function() {
        let specs = [spec("ids", DType::I64, vec![None, None]), spec("x", DType::F32, vec![Some(3)])];
        let shape = |s: &IoSpec| if s.name == "ids" { vec![2, 5] } else { vec![3] };
        let t = generate_inputs_in(&specs, &shape, &BTreeMap::new(), 1).unwrap();
        assert_eq!((t[0].shape(), t[1].shape()), (&[2, 5][..], &[3][..]));
    }

    #[test]
    fn model_input_with_billions_of_elements_is_refused_without_allocating() {
        // 2^31 f64 values (16 GiB) pass the element-count check of `shape_to_usize`.
        let specs = [spec("x", DType::F64, vec![Some(1 << 31)])];
        let err = generate_inputs(&specs, &BTreeMap::new(), 1).unwrap_err().to_string();
        assert!(err.contains("MiB of generated input"), "{err}");
        let overflow = |_: &IoSpec| vec![usize::MAX, 2];
        let err = generate_inputs_in(&specs, &overflow, &BTreeMap::new(), 1).unwrap_err().to_string();
        assert!(err.contains("MiB of generated input"), "{err}");
    }
}
