//! The tract backend: parse, pin symbols, type, optimise once, then run many sessions.
//!
//! Real exported models often carry symbolic dimensions (`batch`, `height`) and sometimes output
//! shapes that no longer match the graph. We pin the manifest's symbols on the inputs *before*
//! type analysis (so shape-dependent control flow resolves), and if analysis trips over a declared
//! output shape we retry ignoring declared output shapes, which is what a user of tract's own
//! command line does by hand with `--onnx-ignore-output-shapes`.

use super::tract_plans::{ShapeKey, ShapePlans};
use super::{Engine, EngineOptions, IoSpec, MemoryEstimate, Session};
use crate::tensor::dtype_of;
use crate::{RuntimeError, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::model::memory::eval_tmp_memory_usage;
use tract_onnx::tract_hir::internal::{DimFact, DimLike, Factoid, GenericFactoid, ShapeFactoid};

/// tract's ONNX parser with the scikit-learn operators of [`super::ml`] registered.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    super::ml::register(&mut onnx.op_register);
    onnx
}

/// A model optimised by tract.
#[derive(Debug)]
pub struct TractEngine {
    plan: Arc<TypedSimplePlan>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    memory: MemoryEstimate,
    executor: Option<multithread::Executor>,
    name: String,
    /// Plans specialised to the request shapes seen most, when the inputs are dynamic; taken
    /// away when the memory budget cannot hold them.
    shape_plans: Mutex<Option<Arc<ShapePlans>>>,
}

fn model_err(opts: &EngineOptions, stage: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Model { model: opts.model_name.clone(), reason: format!("{stage}: {e}") }
}

/// Parses the ONNX bytes into tract's inference model, with symbols pinned on the inputs.
fn parse(onnx: &[u8], opts: &EngineOptions, ignore_output_shapes: bool) -> Result<InferenceModel, RuntimeError> {
    // Pinned symbols make every declared shape that still names them (outputs, intermediate
    // `value_info` hints written by exporters) contradict the pinned inputs, so those
    // declarations are dropped and tract infers them from the pinned inputs instead.
    let pinning = !opts.symbols.is_empty() || !opts.input_shapes.is_empty();
    let framework = framework().with_ignore_output_shapes(ignore_output_shapes || pinning);
    let mut proto = framework
        .proto_model_for_read(&mut &onnx[..])
        .map_err(|e| model_err(opts, "not a valid ONNX protobuf", format!("{e:#}")))?;
    if pinning {
        if let Some(graph) = proto.graph.as_mut() {
            graph.value_info.clear();
        }
    }
    let mut model = framework
        .model_for_proto_model(&proto)
        .map_err(|e| model_err(opts, "cannot build the graph", format!("{e:#}")))?;
    let unsupported = proto
        .graph
        .as_ref()
        .map(|g| crate::inspect::unsupported::unsupported_ops(g, &framework.op_register))
        .unwrap_or_default();
    if !unsupported.is_empty() {
        let reason = crate::inspect::unsupported::unsupported_message(&unsupported);
        return Err(RuntimeError::Unsupported { model: opts.model_name.clone(), reason });
    }
    if !opts.symbols.is_empty() {
        let mut values = SymbolValues::default();
        for (name, value) in &opts.symbols {
            values.set(&model.symbols.sym(name), *value);
        }
        for ix in 0..model.inputs.len() {
            let fact = model.input_fact(ix).map_err(|e| model_err(opts, "input", e))?.clone();
            if let Some(dims) = fact.shape.concretize() {
                let pinned: TVec<TDim> = dims.iter().map(|d| d.eval(&values)).collect();
                let mut new_fact = fact.clone();
                new_fact.shape = pinned.into();
                model.set_input_fact(ix, new_fact).map_err(|e| model_err(opts, "pinning symbols", e))?;
            }
        }
    }
    for (ix, outlet) in model.inputs.clone().iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        let Some(shape) = opts.input_shapes.get(&name) else { continue };
        let fact = model.input_fact(ix).map_err(|e| model_err(opts, "input", e))?.clone();
        let rank_ok = fact.shape.rank().concretize().is_none_or(|r| r as usize == shape.len());
        if !rank_ok {
            return Err(model_err(
                opts,
                "pinning input shapes",
                format!("input `{name}` does not have rank {}", shape.len()),
            ));
        }
        let dims: TVec<DimFact> = shape
            .iter()
            .enumerate()
            .map(|(axis, pinned)| match pinned {
                Some(n) => GenericFactoid::Only(TDim::Val(*n as i64)),
                // Keep the graph's own symbol; an unnamed dimension gets the name the manifest
                // uses for it, so it stays one symbol across the graph.
                None => match fact.shape.dim(axis) {
                    Some(GenericFactoid::Only(d)) => GenericFactoid::Only(d),
                    _ => GenericFactoid::Only(TDim::Sym(
                        model.symbols.sym(&crate::shapes::anonymous_symbol(&name, axis)),
                    )),
                },
            })
            .collect();
        let mut new_fact = fact.clone();
        new_fact.shape = ShapeFactoid::closed(dims);
        model.set_input_fact(ix, new_fact).map_err(|e| model_err(opts, "pinning input shapes", e))?;
    }
    // Dimensions an exporter left unnamed (`?`) are unknown to tract's type analysis, which then
    // cannot type the input at all; each becomes a symbol of its own, the name the manifest uses.
    for (ix, outlet) in model.inputs.clone().iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        let fact = model.input_fact(ix).map_err(|e| model_err(opts, "input", e))?.clone();
        let Some(rank) = fact.shape.rank().concretize() else { continue };
        let open: Vec<usize> =
            (0..rank as usize).filter(|axis| !matches!(fact.shape.dim(*axis), Some(GenericFactoid::Only(_)))).collect();
        if open.is_empty() {
            continue;
        }
        let mut new_fact = fact.clone();
        for axis in open {
            let sym = model.symbols.sym(&crate::shapes::anonymous_symbol(&name, axis));
            new_fact.shape.set_dim(axis, TDim::Sym(sym));
        }
        model.set_input_fact(ix, new_fact).map_err(|e| model_err(opts, "naming unnamed dimensions", e))?;
    }
    Ok(model)
}

fn io_specs(model: &TypedModel, outlets: &[OutletId], opts: &EngineOptions) -> Result<Vec<IoSpec>, RuntimeError> {
    outlets
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o).map_err(|e| model_err(opts, "io", e))?;
            let name = model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone());
            let dtype = dtype_of(fact.datum_type).ok_or_else(|| {
                model_err(
                    opts,
                    "io",
                    format!("tensor `{name}` has type {:?}, which the protocol cannot carry", fact.datum_type),
                )
            })?;
            let shape = fact.shape.iter().map(|d| d.to_usize().ok()).collect();
            Ok(IoSpec { name, dtype, shape })
        })
        .collect()
}

impl TractEngine {
    /// Parses, types and optimises `onnx`.
    pub fn load(onnx: &[u8], opts: &EngineOptions) -> Result<TractEngine, RuntimeError> {
        let typed = match parse(onnx, opts, false)?.into_typed() {
            Ok(t) => t,
            Err(first) => {
                let retry = parse(onnx, opts, true)?.into_typed();
                match retry {
                    Ok(t) => {
                        tracing::warn!(model = %opts.model_name, "declared output shapes disagree with the graph; ignored them");
                        t
                    }
                    Err(_) => return Err(model_err(opts, "type analysis failed", format!("{first:#}"))),
                }
            }
        };
        let typed = if opts.symbols.is_empty() {
            typed
        } else {
            let subs: HashMap<Symbol, TDim> =
                opts.symbols.iter().map(|(k, v)| (typed.symbols.sym(k), TDim::Val(*v))).collect();
            typed.set_symbols(&subs).map_err(|e| model_err(opts, "pinning symbols", format!("{e:#}")))?
        };
        let typed = super::ml::int64_outputs(typed).map_err(|e| model_err(opts, "int64 outputs", format!("{e:#}")))?;
        let inputs = io_specs(&typed, &typed.inputs, opts)?;
        let executor = (opts.threads > 1).then(|| tract_linalg::multithread::Executor::multithread(opts.threads));
        let run_opts = RunOptions { executor: executor.clone(), ..Default::default() };
        let shape_plans = ShapePlans::new(&typed, opts.shape_plans, run_opts.clone(), &opts.model_name);
        let optimized = typed.into_optimized().map_err(|e| model_err(opts, "optimisation failed", format!("{e:#}")))?;
        let outputs = io_specs(&optimized, &optimized.outputs, opts)?;
        let plan = TypedSimplePlan::new_with_options(optimized, &run_opts)
            .map_err(|e| model_err(opts, "planning failed", format!("{e:#}")))?;
        let activations = peak_activation_bytes(&plan, &opts.symbol_bounds);
        let memory = MemoryEstimate { weights_bytes: onnx.len() as u64, activations_bytes: activations };
        let shape_plans = Mutex::new(shape_plans);
        Ok(TractEngine { plan, inputs, outputs, memory, executor, name: opts.model_name.clone(), shape_plans })
    }
}

/// Peak bytes of live intermediate tensors along the plan's execution order, with dynamic
/// dimensions at their upper bounds and free ones at 1 (a floor: the request size limit is
/// what bounds them).
fn peak_activation_bytes(plan: &TypedSimplePlan, bounds: &BTreeMap<String, i64>) -> u64 {
    let model = plan.model();
    let order = plan.order_without_consts();
    let mut values = SymbolValues::default();
    for sym in model.symbols.all_symbols() {
        values.set(&sym, bounds.get(&sym.to_string()).copied().unwrap_or(1));
    }
    eval_tmp_memory_usage(model, order, |_| true)
        .map(|steps| {
            steps.iter().filter_map(|(_, mem)| mem.eval(&values).to_i64().ok()).max().unwrap_or(0).max(0) as u64
        })
        .unwrap_or(0)
}

impl Engine for TractEngine {
    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Tract
    }
    fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }
    fn session(&self) -> Result<Box<dyn Session>, RuntimeError> {
        let state =
            self.plan.spawn().map_err(|e| RuntimeError::Model { model: self.name.clone(), reason: e.to_string() })?;
        Ok(Box::new(TractSession {
            state,
            executor: self.executor.clone(),
            name: self.name.clone(),
            shape_plans: self.plans().clone(),
            shaped: Vec::new(),
        }))
    }
    fn memory(&self) -> MemoryEstimate {
        // A dynamic model also keeps its typed graph and up to `capacity` specialised plans,
        // each with its own packed weights.
        let copies = self.plans().as_ref().map_or(0, |p| 1 + p.capacity() as u64);
        MemoryEstimate { weights_bytes: self.memory.weights_bytes * (1 + copies), ..self.memory }
    }
    fn drop_shape_plans(&self) -> bool {
        self.plans().take().is_some()
    }
    fn settle(&self, timeout: std::time::Duration) -> bool {
        // Cloned out so the wait does not hold the engine's lock.
        let plans = self.plans().clone();
        plans.is_none_or(|p| p.settle(timeout))
    }
    fn specialised_shapes(&self) -> Vec<ShapeKey> {
        self.plans().as_ref().map(|p| p.cached()).unwrap_or_default()
    }
}

impl TractEngine {
    fn plans(&self) -> MutexGuard<'_, Option<Arc<ShapePlans>>> {
        self.shape_plans.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct TractSession {
    /// Runs any shape in range.
    state: TypedSimpleState,
    executor: Option<multithread::Executor>,
    name: String,
    shape_plans: Option<Arc<ShapePlans>>,
    /// This session's states of specialised plans, most recently used last.
    shaped: Vec<(ShapeKey, TypedSimpleState)>,
}

impl TractSession {
    /// The state to run `inputs` on: a specialised plan's when one is ready for their shapes.
    fn state_for(&mut self, inputs: &[Tensor]) -> Result<&mut TypedSimpleState, RuntimeError> {
        let Some(plans) = &self.shape_plans else { return Ok(&mut self.state) };
        let key: ShapeKey = inputs.iter().map(|t| t.shape().to_vec()).collect();
        if let Some(pos) = self.shaped.iter().position(|(k, _)| *k == key) {
            let entry = self.shaped.remove(pos);
            self.shaped.push(entry);
        } else {
            let Some(plan) = plans.lookup(&key) else { return Ok(&mut self.state) };
            let state =
                plan.spawn().map_err(|e| RuntimeError::Model { model: self.name.clone(), reason: e.to_string() })?;
            if self.shaped.len() >= plans.capacity() {
                self.shaped.remove(0);
            }
            self.shaped.push((key, state));
        }
        Ok(&mut self.shaped.last_mut().expect("pushed above").1)
    }
}

impl Session for TractSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let executor = self.executor.clone();
        let state = self.state_for(&inputs)?;
        let inputs: TVec<TValue> = inputs.into_iter().map(|t| t.into_tvalue()).collect();
        let result = match &executor {
            Some(ex) => multithread::multithread_tract_scope(ex.clone(), || state.run(inputs)),
            None => state.run(inputs),
        };
        let outputs =
            result.map_err(|e| RuntimeError::Inference { model: self.name.clone(), reason: format!("{e:#}") })?;
        Ok(outputs.into_iter().map(|v| v.into_tensor()).collect())
    }
}
