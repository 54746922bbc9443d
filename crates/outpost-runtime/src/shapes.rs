//! The shapes a model accepts, as its manifest declares them: each dimension fixed, pinned,
//! bounded (`1..=512`) or free, and the same symbol the same size wherever it appears.
//!
//! The backends check rank and fixed sizes themselves, but only the manifest knows the bounds
//! the packager chose and which dimensions share a name, so requests are checked here first and
//! a misfit is the client's error naming the tensor, not an engine failure.

use crate::backend::IoSpec;
use crate::{RuntimeError, Tensor};
use outpost_proto::manifest::{Dim, DimRange, Manifest};
use std::collections::BTreeMap;

/// What one dimension of an input may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimRule {
    /// Exactly this size (a number in the graph, or a pinned symbol).
    Fixed(usize),
    /// A dynamic dimension; every dimension with the same name has the same size in a request.
    Dynamic {
        /// Symbol name.
        name: String,
        /// Sizes allowed.
        range: DimRange,
    },
}

/// The rules for every input of a model, in graph order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputRules {
    inputs: Vec<(String, Vec<DimRule>)>,
}

/// The symbol given to the unnamed dynamic dimension `axis` of `input` (exporters often leave
/// dimensions unnamed; a name lets the manifest pin or bound them).
pub fn anonymous_symbol(input: &str, axis: usize) -> String {
    format!("{input}.{axis}")
}

/// Whether a declared symbol is one an exporter left unnamed (`?`, empty, `unk__3`).
pub fn is_unnamed(symbol: &str) -> bool {
    symbol.is_empty() || symbol == "?" || symbol.starts_with("unk__")
}

impl InputRules {
    /// The rules a manifest declares.
    pub fn from_manifest(manifest: &Manifest) -> InputRules {
        let inputs = manifest
            .inputs
            .iter()
            .map(|t| {
                let dims = t
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| match d {
                        Dim::Fixed(n) => DimRule::Fixed(usize::try_from(*n).unwrap_or(0)),
                        Dim::Symbol(s) => {
                            let name = if is_unnamed(s) { anonymous_symbol(&t.name, axis) } else { s.clone() };
                            // Packages made before dimensions were named pinned `? = 1` itself.
                            let pin = manifest.symbols.get(&name).or_else(|| manifest.symbols.get(s));
                            match pin {
                                Some(v) => DimRule::Fixed(usize::try_from(*v).unwrap_or(0)),
                                None => DimRule::Dynamic {
                                    range: manifest.ranges.get(&name).copied().unwrap_or_default(),
                                    name,
                                },
                            }
                        }
                    })
                    .collect();
                (t.name.clone(), dims)
            })
            .collect();
        InputRules { inputs }
    }

    /// The rules of one input.
    pub fn input(&self, name: &str) -> Option<&[DimRule]> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice())
    }

    /// Concrete input shapes with some dimensions pinned, by input name: `None` where the
    /// dimension stays dynamic. Inputs with nothing pinned are left out.
    pub fn pinned(&self) -> BTreeMap<String, Vec<Option<usize>>> {
        self.inputs
            .iter()
            .filter(|(_, dims)| dims.iter().any(|d| matches!(d, DimRule::Fixed(_))))
            .map(|(name, dims)| {
                let dims = dims
                    .iter()
                    .map(|d| match d {
                        DimRule::Fixed(n) => Some(*n),
                        DimRule::Dynamic { .. } => None,
                    })
                    .collect();
                (name.clone(), dims)
            })
            .collect()
    }

    /// The largest size each bounded symbol may take, for memory estimates.
    pub fn upper_bounds(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for (_, dims) in &self.inputs {
            for d in dims {
                if let DimRule::Dynamic { name, range: DimRange { max: Some(max), .. } } = d {
                    out.insert(name.clone(), *max);
                }
            }
        }
        out
    }

    /// `specs` with the dimensions these rules fix filled in, for metadata and generated inputs.
    pub fn refine(&self, specs: &[IoSpec]) -> Vec<IoSpec> {
        specs
            .iter()
            .map(|spec| {
                let mut spec = spec.clone();
                if let Some(dims) = self.input(&spec.name).filter(|d| d.len() == spec.shape.len()) {
                    for (s, d) in spec.shape.iter_mut().zip(dims) {
                        if let DimRule::Fixed(n) = d {
                            *s = Some(*n);
                        }
                    }
                }
                spec
            })
            .collect()
    }

    /// Checks request tensors (in graph order, named by `specs`) against the rules: rank, fixed
    /// sizes, bounds, and that a symbol has one size across all inputs.
    pub fn check(&self, specs: &[IoSpec], inputs: &[Tensor]) -> Result<(), RuntimeError> {
        let mut seen: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for (spec, tensor) in specs.iter().zip(inputs) {
            let Some(dims) = self.input(&spec.name) else { continue };
            let shape = tensor.shape();
            let bad = |reason: String| RuntimeError::BadInput { tensor: spec.name.clone(), reason };
            if dims.len() != shape.len() {
                return Err(bad(format!("expected {} dimensions {}, got shape {shape:?}", dims.len(), describe(dims))));
            }
            for (axis, (rule, &size)) in dims.iter().zip(shape).enumerate() {
                match rule {
                    DimRule::Fixed(n) if *n != size => {
                        return Err(bad(format!("dimension {axis} must be {n}, got {size} (shape {})", describe(dims))))
                    }
                    DimRule::Fixed(_) => {}
                    DimRule::Dynamic { name, range } => {
                        if !range.contains(size as i64) {
                            return Err(bad(format!("dimension {axis} (`{name}`) must be in {range}, got {size}")));
                        }
                        match seen.get(name.as_str()) {
                            Some((other, input)) if *other != size => {
                                return Err(bad(format!(
                                    "dimension {axis} (`{name}`) is {size} but `{name}` is {other} in input `{input}`"
                                )))
                            }
                            Some(_) => {}
                            None => {
                                seen.insert(name.as_str(), (size, spec.name.as_str()));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// `[batch, 3, sequence 1..=512]` for error messages.
fn describe(dims: &[DimRule]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            DimRule::Fixed(n) => n.to_string(),
            DimRule::Dynamic { name, range } if *range == DimRange::default() => name.clone(),
            DimRule::Dynamic { name, range } => format!("{name} {range}"),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::manifest::TensorSpec;
    use outpost_proto::DType;

    fn manifest() -> Manifest {
        let spec = |name: &str, shape: Vec<Dim>| TensorSpec { name: name.into(), dtype: DType::I64, shape };
        let sym = |s: &str| Dim::Symbol(s.into());
        let mut m = crate::pipeline::tests::manifest("regression", &[]);
        m.inputs = vec![
            spec("input_ids", vec![sym("batch"), sym("sequence")]),
            spec("mask", vec![sym("batch"), sym("sequence")]),
            spec("extra", vec![sym("?"), Dim::Fixed(4)]),
        ];
        m.symbols = BTreeMap::from([("batch".into(), 1)]);
        m.ranges = BTreeMap::from([("sequence".into(), DimRange { min: 1, max: Some(8) })]);
        m
    }

    fn specs(m: &Manifest) -> Vec<IoSpec> {
        m.inputs
            .iter()
            .map(|t| IoSpec { name: t.name.clone(), dtype: t.dtype, shape: vec![None; t.shape.len()] })
            .collect()
    }

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zero::<i64>(shape).unwrap()
    }

    #[test]
    fn pinned_bounded_free_and_shared_symbols_are_checked_naming_the_input() {
        let m = manifest();
        let rules = InputRules::from_manifest(&m);
        let specs = specs(&m);
        rules.check(&specs, &[zeros(&[1, 5]), zeros(&[1, 5]), zeros(&[300, 4])]).unwrap();
        let err = |inputs: &[Tensor]| rules.check(&specs, inputs).unwrap_err().to_string();
        let e = err(&[zeros(&[2, 5]), zeros(&[2, 5]), zeros(&[1, 4])]);
        assert!(e.contains("input `input_ids`") && e.contains("must be 1, got 2"), "{e}");
        let e = err(&[zeros(&[1, 9]), zeros(&[1, 9]), zeros(&[1, 4])]);
        assert!(e.contains("`sequence`") && e.contains("1..=8") && e.contains("got 9"), "{e}");
        let e = err(&[zeros(&[1, 5]), zeros(&[1, 6]), zeros(&[1, 4])]);
        assert!(e.contains("input `mask`") && e.contains("in input `input_ids`"), "{e}");
        let e = err(&[zeros(&[1, 5]), zeros(&[1, 5]), zeros(&[1, 4, 1])]);
        assert!(e.contains("input `extra`") && e.contains("2 dimensions"), "{e}");
        assert!(err(&[zeros(&[1, 5]), zeros(&[1, 5]), zeros(&[1, 3])]).contains("must be 4"));
    }

    #[test]
    fn unnamed_dimensions_get_a_name_that_pins_and_bounds_them() {
        let mut m = manifest();
        m.symbols.insert(anonymous_symbol("extra", 0), 2);
        let rules = InputRules::from_manifest(&m);
        assert_eq!(rules.pinned()["extra"], vec![Some(2), Some(4)]);
        assert_eq!(rules.pinned()["input_ids"], vec![Some(1), None]);
        assert_eq!(rules.upper_bounds(), BTreeMap::from([("sequence".to_string(), 8)]));
        let refined = rules.refine(&specs(&m));
        assert_eq!(refined[2].shape, vec![Some(2), Some(4)]);
        assert_eq!(refined[0].shape, vec![Some(1), None]);
    }

    #[test]
    fn packages_that_pinned_the_unnamed_symbol_itself_stay_pinned() {
        let mut m = manifest();
        m.symbols.insert("?".into(), 1);
        assert_eq!(InputRules::from_manifest(&m).pinned()["extra"], vec![Some(1), Some(4)]);
    }

    #[test]
    fn ranges_parse_from_flags() {
        assert_eq!("1..=512".parse::<DimRange>().unwrap(), DimRange { min: 1, max: Some(512) });
        assert_eq!("16..".parse::<DimRange>().unwrap(), DimRange { min: 16, max: None });
        assert_eq!("..=4096".parse::<DimRange>().unwrap(), DimRange { min: 1, max: Some(4096) });
        assert_eq!("1..10".parse::<DimRange>().unwrap(), DimRange { min: 1, max: Some(9) });
        for bad in ["0..=3", "5..=4", "x", "1..=y"] {
            assert!(bad.parse::<DimRange>().is_err(), "{bad}");
        }
    }
}
