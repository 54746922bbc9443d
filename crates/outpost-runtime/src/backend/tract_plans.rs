//! Plans specialised to one concrete input shape, for tract models with dynamic dimensions.
//!
//! tract runs a symbolic plan on any shape in range, but it pays for it on every call: dimension
//! expressions are evaluated per operator and kernels are picked without knowing the sizes
//! (the encoder at sequence 32 ran 25 % slower than the same graph pinned). Clients of a
//! dynamic model usually send a few shapes over and over (one camera resolution, one audio
//! chunk length), so a shape seen twice gets a plan of its own: the symbolic typed graph with
//! the symbols substituted, optimised as if it had been pinned at load.
//!
//! Compiling takes milliseconds to seconds, so it runs on a background thread, one at a time,
//! while requests keep running on the symbolic plan: no request ever waits for a compile. A
//! shape that fails to compile is not tried again and stays on the symbolic plan. The cache is
//! a small LRU because each plan holds its own packed weights.

use crate::RuntimeError;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

/// The concrete input shapes of one request, in graph order.
pub type ShapeKey = Vec<Vec<usize>>;

/// Sightings kept for shapes without a plan; forgotten wholesale when full, so a stream of
/// one-off shapes cannot grow it.
const MAX_SIGHTINGS: usize = 256;
/// How often a shape must be seen before it gets a plan of its own.
const SIGHTINGS_TO_COMPILE: u32 = 2;

/// Where each input symbol is read from: (input index, axis, symbol).
type SymbolSlots = Vec<(usize, usize, Symbol)>;

/// The per-shape plans of one engine, shared by its sessions.
#[derive(Debug)]
pub struct ShapePlans {
    typed: TypedModel,
    slots: SymbolSlots,
    capacity: usize,
    run_opts: RunOptions,
    name: String,
    state: Mutex<CacheState>,
    idle: Condvar,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Most recently used last.
    plans: Vec<(ShapeKey, Arc<TypedSimplePlan>)>,
    sightings: HashMap<ShapeKey, u32>,
    failed: HashSet<ShapeKey>,
    compiling: bool,
}

impl ShapePlans {
    /// A cache over `typed` (symbolic, not yet optimised), or `None` when the inputs have no
    /// dynamic dimension, a dynamic dimension is an expression rather than a plain symbol, or
    /// `capacity` is 0.
    pub fn new(typed: &TypedModel, capacity: usize, run_opts: RunOptions, name: &str) -> Option<Arc<ShapePlans>> {
        if capacity == 0 {
            return None;
        }
        let mut slots = SymbolSlots::new();
        for (ix, outlet) in typed.inputs.iter().enumerate() {
            let fact = typed.outlet_fact(*outlet).ok()?;
            for (axis, dim) in fact.shape.iter().enumerate() {
                match dim {
                    TDim::Val(_) => {}
                    TDim::Sym(s) => slots.push((ix, axis, s.clone())),
                    _ => return None,
                }
            }
        }
        if slots.is_empty() {
            return None;
        }
        Some(Arc::new(ShapePlans {
            typed: typed.clone(),
            slots,
            capacity,
            run_opts,
            name: name.to_string(),
            state: Mutex::new(CacheState::default()),
            idle: Condvar::new(),
        }))
    }

    /// How many plans the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // A panic while holding the lock leaves only counters half-updated: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan for `key` if one is ready; otherwise counts the sighting and, on the second,
    /// starts compiling one in the background.
    pub fn lookup(self: &Arc<Self>, key: &ShapeKey) -> Option<Arc<TypedSimplePlan>> {
        let mut st = self.lock();
        if let Some(pos) = st.plans.iter().position(|(k, _)| k == key) {
            let entry = st.plans.remove(pos);
            let plan = entry.1.clone();
            st.plans.push(entry);
            return Some(plan);
        }
        if st.failed.contains(key) {
            return None;
        }
        if st.sightings.len() >= MAX_SIGHTINGS && !st.sightings.contains_key(key) {
            st.sightings.clear();
        }
        let seen = st.sightings.entry(key.clone()).or_insert(0);
        *seen = seen.saturating_add(1);
        // One compile at a time: a shape that is due waits for its next sighting.
        if *seen < SIGHTINGS_TO_COMPILE || st.compiling {
            return None;
        }
        st.sightings.remove(key);
        st.compiling = true;
        drop(st);
        let this = Arc::clone(self);
        let key = key.clone();
        let spawned = std::thread::Builder::new().name("tract-shape-plan".into()).spawn(move || this.compile(key));
        if spawned.is_err() {
            self.lock().compiling = false;
            self.idle.notify_all();
        }
        None
    }

    fn compile(&self, key: ShapeKey) {
        let started = Instant::now();
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build(&key)))
            .unwrap_or_else(|_| Err(RuntimeError::Model { model: self.name.clone(), reason: "panicked".into() }));
        let mut st = self.lock();
        match built {
            Ok(plan) => {
                tracing::debug!(model = %self.name, shape = ?key, ms = started.elapsed().as_millis() as u64, "compiled a plan for this shape");
                if st.plans.len() >= self.capacity {
                    st.plans.remove(0);
                }
                st.plans.push((key, plan));
            }
            Err(e) => {
                tracing::info!(model = %self.name, shape = ?key, error = %e, "no specialised plan for this shape; the dynamic plan serves it");
                st.failed.insert(key);
            }
        }
        st.compiling = false;
        drop(st);
        self.idle.notify_all();
    }

    /// Substitutes the symbols read off `key` and optimises, as loading a pinned model would.
    fn build(&self, key: &ShapeKey) -> Result<Arc<TypedSimplePlan>, RuntimeError> {
        let err = |stage: &str, e: TractError| RuntimeError::Model {
            model: self.name.clone(),
            reason: format!("{stage}: {e:#}"),
        };
        let mut subs: HashMap<Symbol, TDim> = HashMap::new();
        for (input, axis, sym) in &self.slots {
            let value = key.get(*input).and_then(|s| s.get(*axis)).copied().ok_or_else(|| RuntimeError::Model {
                model: self.name.clone(),
                reason: "request rank does not match the graph".into(),
            })?;
            let value = TDim::Val(value as i64);
            if subs.insert(sym.clone(), value.clone()).is_some_and(|prev| prev != value) {
                return Err(RuntimeError::Model {
                    model: self.name.clone(),
                    reason: format!("symbol `{sym}` has two sizes in one request"),
                });
            }
        }
        let pinned = self.typed.set_symbols(&subs).map_err(|e| err("substituting symbols", e))?;
        let optimized = pinned.into_optimized().map_err(|e| err("optimisation", e))?;
        let plan = TypedSimplePlan::new_with_options(optimized, &self.run_opts).map_err(|e| err("planning", e))?;
        Ok(plan)
    }

    /// Waits until no compile is running, at most `timeout`; true when idle.
    pub fn settle(&self, timeout: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self.idle.wait_timeout_while(st, timeout, |s| s.compiling).unwrap_or_else(|p| p.into_inner());
        !st.compiling
    }

    /// The shapes that have a plan, least recently used first.
    pub fn cached(&self) -> Vec<ShapeKey> {
        self.lock().plans.iter().map(|(k, _)| k.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::tract::TractEngine;
    use crate::backend::{Engine, EngineOptions};
    use crate::test_graphs::{encode, node, table, value, D};
    use crate::Tensor;
    use std::time::Duration;
    use tract_onnx::pb::tensor_proto::DataType;
    use tract_onnx::pb::GraphProto;
    use tract_onnx::prelude::tract_ndarray;

    /// `[batch, sequence, 8] x [8, 4]`, softmax over the last axis: every dim but one is dynamic.
    fn dynamic_graph() -> Vec<u8> {
        encode(GraphProto {
            name: "dyn".into(),
            node: vec![node("MatMul", &["x", "w"], &["h"], vec![]), node("Softmax", &["h"], &["y"], vec![])],
            initializer: vec![table("w", &[8, 4])],
            input: vec![value("x", DataType::Float, &[D::S("batch"), D::S("sequence"), D::N(8)])],
            output: vec![value("y", DataType::Float, &[D::S("batch"), D::S("sequence"), D::N(4)])],
            ..Default::default()
        })
    }

    fn input(batch: usize, seq: usize) -> Tensor {
        let n = batch * seq * 8;
        let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        tract_ndarray::Array3::from_shape_vec((batch, seq, 8), data).unwrap().into()
    }

    fn load(shape_plans: usize) -> TractEngine {
        let opts = EngineOptions { model_name: "dyn".into(), shape_plans, ..Default::default() };
        TractEngine::load(&dynamic_graph(), &opts).unwrap()
    }

    #[test]
    fn a_repeated_shape_gets_its_own_plan_with_the_same_answers() {
        let engine = load(2);
        let mut session = engine.session().unwrap();
        let first = session.run(vec![input(2, 5)]).unwrap();
        assert!(engine.specialised_shapes().is_empty(), "one sighting compiles nothing");
        let second = session.run(vec![input(2, 5)]).unwrap();
        assert!(engine.settle(Duration::from_secs(60)));
        assert_eq!(engine.specialised_shapes(), vec![vec![vec![2, 5, 8]]]);
        let specialised = session.run(vec![input(2, 5)]).unwrap();
        assert_eq!(first, second);
        assert_eq!(first, specialised, "the specialised plan answers like the dynamic one");
        // Other shapes still run (on the dynamic plan) while and after the cache fills.
        let other = session.run(vec![input(1, 3)]).unwrap();
        assert_eq!(other[0].shape(), &[1, 3, 4]);
    }

    #[test]
    fn the_cache_keeps_the_most_recent_shapes_and_zero_turns_it_off() {
        let engine = load(1);
        let mut session = engine.session().unwrap();
        for shape in [(1, 4), (1, 6)] {
            for _ in 0..2 {
                session.run(vec![input(shape.0, shape.1)]).unwrap();
            }
            assert!(engine.settle(Duration::from_secs(60)));
        }
        assert_eq!(engine.specialised_shapes(), vec![vec![vec![1, 6, 8]]]);
        // A session holding an evicted shape's state gives it up and still answers.
        assert_eq!(session.run(vec![input(1, 4)]).unwrap()[0].shape(), &[1, 4, 4]);

        let off = load(0);
        let mut session = off.session().unwrap();
        for _ in 0..3 {
            session.run(vec![input(1, 4)]).unwrap();
        }
        assert!(off.settle(Duration::from_secs(1)));
        assert!(off.specialised_shapes().is_empty());
        assert!(off.memory().weights_bytes < engine.memory().weights_bytes, "plans count in the estimate");
        assert!(engine.drop_shape_plans());
        assert_eq!(engine.memory(), off.memory(), "dropped plans no longer count");
        assert!(!engine.drop_shape_plans());
        assert!(engine.specialised_shapes().is_empty());
    }
}
