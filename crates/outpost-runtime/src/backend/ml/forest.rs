//! Decision forests: the nodes of every tree in one array, walked once per row and tree, and the
//! per-target aggregation (SUM, AVERAGE, MIN, MAX) onnxruntime applies to the leaves reached.
//!
//! tract-onnx-opl has a forest too, but it reads nodes with unchecked indexing from attributes a
//! model file controls, treats `BRANCH_GTE` nodes as leaves, starts MIN and MAX at 0 instead of at
//! the first leaf, and has no `BRANCH_MEMBER`. This one is checked once when built (every child
//! exists, no tree loops, targets in range), so walking it cannot fail or run forever.

use std::collections::HashMap;
use tract_onnx::tract_hir::internal::*;

/// How a branch compares the feature `x` with its threshold `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// `x <= t`.
    Leq,
    /// `x < t`.
    Lt,
    /// `x >= t`.
    Gte,
    /// `x > t`.
    Gt,
    /// `x == t`.
    Eq,
    /// `x != t`.
    Neq,
    /// `x` is in the given set (`TreeEnsemble`'s `BRANCH_MEMBER`).
    Member(usize),
}

impl Rule {
    /// The rule named by an opset-1 `nodes_modes` string; `None` for `LEAF`.
    pub fn from_mode(mode: &str) -> TractResult<Option<Rule>> {
        Ok(Some(match mode {
            "LEAF" => return Ok(None),
            "BRANCH_LEQ" => Rule::Leq,
            "BRANCH_LT" => Rule::Lt,
            "BRANCH_GTE" => Rule::Gte,
            "BRANCH_GT" => Rule::Gt,
            "BRANCH_EQ" => Rule::Eq,
            "BRANCH_NEQ" => Rule::Neq,
            other => bail!("node mode `{other}` is not LEAF or BRANCH_LEQ/LT/GTE/GT/EQ/NEQ"),
        }))
    }
}

/// How the leaves reached in every tree combine per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aggregate {
    /// Sum of the leaf weights.
    Sum,
    /// Sum divided by the number of trees.
    Average,
    /// Smallest leaf weight.
    Min,
    /// Largest leaf weight.
    Max,
}

impl Aggregate {
    /// Parses the opset-1 string form.
    pub fn parse(s: &str) -> TractResult<Aggregate> {
        Ok(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => bail!("aggregate_function `{other}` is not SUM, AVERAGE, MIN or MAX"),
        })
    }
}

#[derive(Debug, Clone)]
enum Node {
    Branch {
        feature: usize,
        threshold: f32,
        rule: Rule,
        nan_is_true: bool,
        yes: usize,
        no: usize,
    },
    /// Weights `first..first + len` of the forest.
    Leaf {
        first: usize,
        len: usize,
    },
}

/// One node as the attributes describe it, children given as node indices (`Err` = leaf index
/// for `TreeEnsemble`'s leaf arrays, resolved by the caller into weights).
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    /// Feature index compared.
    pub feature: usize,
    /// Threshold.
    pub threshold: f32,
    /// Comparison; `None` for a leaf.
    pub rule: Option<Rule>,
    /// Whether a NaN feature takes the true branch.
    pub nan_is_true: bool,
    /// Index (into the spec list) of the true child.
    pub yes: usize,
    /// Index of the false child.
    pub no: usize,
    /// Leaf weights: (target, weight).
    pub weights: Vec<(usize, f32)>,
}

/// A validated forest.
#[derive(Debug, Clone)]
pub(crate) struct Forest {
    nodes: Vec<Node>,
    roots: Vec<usize>,
    weights: Vec<(usize, f32)>,
    sets: Vec<Vec<f32>>,
    /// Number of targets (regressors) or classes.
    pub n_targets: usize,
    /// Number of input features the forest reads (largest feature index + 1).
    pub n_features: usize,
    /// How leaves combine.
    pub aggregate: Aggregate,
}

impl Forest {
    /// Builds a forest from node specs and the index of each tree's root; `sets` are the value
    /// sets of `Rule::Member`.
    pub fn new(
        specs: Vec<NodeSpec>,
        roots: Vec<usize>,
        sets: Vec<Vec<f32>>,
        n_targets: usize,
        aggregate: Aggregate,
    ) -> TractResult<Forest> {
        if n_targets == 0 {
            bail!("the ensemble has no target or class");
        }
        let n = specs.len();
        let mut nodes = Vec::with_capacity(n);
        let mut weights = Vec::new();
        let mut n_features = 0;
        for (ix, spec) in specs.into_iter().enumerate() {
            nodes.push(match spec.rule {
                Some(rule) => {
                    if spec.yes >= n || spec.no >= n || spec.yes == ix || spec.no == ix {
                        bail!("node {ix}: a child is missing or is the node itself");
                    }
                    if let Rule::Member(set) = rule {
                        if set >= sets.len() {
                            bail!("node {ix}: BRANCH_MEMBER has no value set");
                        }
                    }
                    n_features = n_features.max(spec.feature + 1);
                    Node::Branch {
                        feature: spec.feature,
                        threshold: spec.threshold,
                        rule,
                        nan_is_true: spec.nan_is_true,
                        yes: spec.yes,
                        no: spec.no,
                    }
                }
                None => {
                    if spec.weights.is_empty() {
                        bail!("leaf node {ix} has no weight");
                    }
                    if let Some((t, _)) = spec.weights.iter().find(|(t, _)| *t >= n_targets) {
                        bail!("leaf node {ix} adds to target {t} but there are {n_targets} targets");
                    }
                    let first = weights.len();
                    weights.extend_from_slice(&spec.weights);
                    Node::Leaf { first, len: spec.weights.len() }
                }
            });
        }
        if roots.is_empty() {
            bail!("the ensemble has no tree");
        }
        if let Some(r) = roots.iter().find(|r| **r >= n) {
            bail!("a tree root ({r}) is not a node");
        }
        let forest = Forest { nodes, roots, weights, sets, n_targets, n_features, aggregate };
        forest.check_acyclic()?;
        Ok(forest)
    }

    /// Every walk from a root ends at a leaf: depth-first from each root, a node met again on the
    /// current path is a loop. Trees may share nodes; a node fully explored is not explored again.
    fn check_acyclic(&self) -> TractResult<()> {
        // 0 = unseen, 1 = on the current path, 2 = done.
        let mut state = vec![0u8; self.nodes.len()];
        for &root in &self.roots {
            let mut stack = vec![(root, false)];
            while let Some((ix, children_done)) = stack.pop() {
                if children_done {
                    state[ix] = 2;
                    continue;
                }
                match state[ix] {
                    2 => continue,
                    1 => bail!("the tree through node {ix} loops back on itself"),
                    _ => {}
                }
                state[ix] = 1;
                stack.push((ix, true));
                if let Node::Branch { yes, no, .. } = self.nodes[ix] {
                    for child in [yes, no] {
                        if state[child] == 1 {
                            bail!("the tree through node {ix} loops back on itself");
                        }
                        if state[child] == 0 {
                            stack.push((child, false));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// The weights of the leaf `row` reaches in the tree rooted at `root`.
    fn leaf(&self, root: usize, row: &[f32]) -> &[(usize, f32)] {
        let mut ix = root;
        loop {
            match &self.nodes[ix] {
                Node::Leaf { first, len } => return &self.weights[*first..*first + *len],
                Node::Branch { feature, threshold, rule, nan_is_true, yes, no } => {
                    let x = row[*feature];
                    let t = *threshold;
                    let go = match rule {
                        Rule::Leq => x <= t,
                        Rule::Lt => x < t,
                        Rule::Gte => x >= t,
                        Rule::Gt => x > t,
                        Rule::Eq => x == t,
                        Rule::Neq => x != t,
                        Rule::Member(set) => self.sets[*set].contains(&x),
                    } || (*nan_is_true && x.is_nan());
                    ix = if go { *yes } else { *no };
                }
            }
        }
    }

    /// Checks that rows of `columns` features are wide enough for the forest.
    pub fn check_columns(&self, op: &str, columns: usize) -> TractResult<()> {
        if columns < self.n_features {
            bail!("{op}: the trees read feature {} but the input has {columns} features per row", self.n_features - 1);
        }
        Ok(())
    }

    /// Aggregates one row over every tree into `scores` (per target) and `reached` (whether any
    /// leaf gave that target a weight). A single-target forest takes each leaf's first weight only,
    /// as onnxruntime's single-target path does.
    pub fn accumulate(&self, row: &[f32], scores: &mut [f32], reached: &mut [bool]) {
        scores.iter_mut().for_each(|s| *s = 0.0);
        reached.iter_mut().for_each(|r| *r = false);
        for &root in &self.roots {
            let leaf = self.leaf(root, row);
            let leaf = if self.n_targets == 1 { &leaf[..1] } else { leaf };
            for &(t, w) in leaf {
                let (s, r) = (&mut scores[t], &mut reached[t]);
                match self.aggregate {
                    Aggregate::Sum | Aggregate::Average => *s += w,
                    Aggregate::Min => *s = if !*r || w < *s { w } else { *s },
                    Aggregate::Max => *s = if !*r || w > *s { w } else { *s },
                }
                *r = true;
            }
        }
    }
}

/// Resolves opset-1 `(tree id, node id)` pairs: the index of every node, each tree's root (its
/// first listed node, as onnxruntime takes it), and the index of a child within the same tree.
#[derive(Debug)]
pub(crate) struct NodeIds {
    index: HashMap<(i64, i64), usize>,
    /// Root node index of each tree, in order of first appearance.
    pub roots: Vec<usize>,
}

impl NodeIds {
    /// Indexes the nodes; a repeated `(tree, node)` pair is an error.
    pub fn new(tree_ids: &[i64], node_ids: &[i64]) -> TractResult<NodeIds> {
        let mut index = HashMap::with_capacity(tree_ids.len());
        let mut roots = Vec::new();
        let mut seen_trees = std::collections::HashSet::new();
        for (ix, (&t, &n)) in tree_ids.iter().zip(node_ids).enumerate() {
            if index.insert((t, n), ix).is_some() {
                bail!("node {n} of tree {t} is listed twice");
            }
            if seen_trees.insert(t) {
                roots.push(ix);
            }
        }
        Ok(NodeIds { index, roots })
    }

    /// The index of node `node` of tree `tree`.
    pub fn find(&self, tree: i64, node: i64) -> TractResult<usize> {
        self.index.get(&(tree, node)).copied().ok_or_else(|| format_err!("tree {tree} has no node {node}"))
    }
}
