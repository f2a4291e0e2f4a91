//! Isolation-forest scoring that replicates scikit-learn's
//! `IsolationForest.score_samples` (1.9.x) exactly, from the JSON export that
//! `sluice/model.py` writes (docs/models.md describes the format).
//!
//! What sklearn does, and what this does in the same order:
//!
//! 1. the input row is cast to `float32` (`validate_data(dtype=np.float32)`);
//!    here each value is `(x as f32)`, after missing values (NaN) were replaced
//!    by the training medians recorded in the export (`impute`), which is what
//!    `sluice.model` does before it calls sklearn;
//! 2. per estimator, the row is reduced to the estimator's columns
//!    (`estimators_features_`, only when `max_features < n_features`; the export
//!    writes the identity map otherwise), then walked from the root:
//!    NaN → `missing_go_to_left`, `x <= threshold` (f32 widened to f64) → left,
//!    else right (`Tree._apply_dense`);
//! 3. per estimator, `depth(leaf) + c(n_node_samples(leaf)) - 1.0` (root depth 1, as
//!    `Tree.compute_node_depths` counts) is added to
//!    the row's total, estimators in order (`_parallel_compute_tree_depths`);
//!    `c(n)` is `_average_path_length`: 0 for n <= 1, 1 for n == 2, else
//!    `2 (ln(n - 1) + γ) - 2 (n - 1) / n`;
//! 4. `score = -(2 ^ (-total / (n_estimators · c(max_samples))))`, and
//!    `-1.0` when that denominator is 0 (a single training sample).
//!
//! The leaf term of step 3 is precomputed per leaf at load time (same f64
//! expression, same rounding). Loading validates every field and names the
//! bad one; nothing here panics on bad input: children must have a larger
//! index than their parent (sklearn writes nodes depth-first), so walks end.

use serde::Deserialize;

use crate::errors::SluiceErr;

/// The export format this module reads (`"format"` in the JSON).
pub const FORMAT: &str = "sluice-isolation-forest";
/// The version of that format this module reads (`"format_version"`).
pub const FORMAT_VERSION: u32 = 1;

const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
const LEAF: i64 = -1;

/// sklearn's `_average_path_length` for one count.
pub fn average_path_length(n: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else if n == 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTree {
    features: Vec<i64>,
    children_left: Vec<i64>,
    children_right: Vec<i64>,
    feature: Vec<i64>,
    threshold: Vec<f64>,
    n_node_samples: Vec<i64>,
    missing_go_to_left: Vec<u8>,
}

#[derive(Deserialize)]
struct RawModel {
    format: String,
    format_version: u32,
    n_features: usize,
    #[serde(default)]
    feature_names: Option<Vec<String>>,
    impute: Vec<f64>,
    max_samples: f64,
    offset: f64,
    #[serde(default)]
    threshold: Option<f64>,
    estimators: Vec<RawTree>,
}

/// One node, laid out for the walk. A leaf has `left == 0` (the root is never
/// a child, so 0 is free) and carries its precomputed path-length term.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Input column (already mapped through the estimator's feature subset).
    column: u32,
    left: u32,
    right: u32,
    missing_left: bool,
    /// Split threshold (internal nodes) or `depth + c(n) - 1` (leaves).
    value: f64,
}

#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    #[inline]
    fn leaf_term(&self, row: &[f32]) -> f64 {
        let nodes = &self.nodes;
        let mut i = 0usize;
        loop {
            let n = &nodes[i];
            if n.left == 0 {
                return n.value;
            }
            let x = row[n.column as usize];
            let go_left = if x.is_nan() {
                n.missing_left
            } else {
                f64::from(x) <= n.value
            };
            i = if go_left { n.left } else { n.right } as usize;
        }
    }
}

/// A loaded, validated isolation forest.
#[derive(Debug, Clone)]
pub struct IsolationForest {
    n_features: usize,
    feature_names: Option<Vec<String>>,
    impute: Vec<f64>,
    max_samples: f64,
    offset: f64,
    threshold: Option<f64>,
    trees: Vec<Tree>,
    /// `n_estimators · c(max_samples)`.
    denominator: f64,
}

fn bad(field: &str, why: impl std::fmt::Display) -> SluiceErr {
    SluiceErr::Model(format!("model JSON: field '{field}': {why}"))
}

fn to_u32(v: i64, field: &str, limit: usize) -> Result<u32, SluiceErr> {
    if v < 0 || (v as u64) >= limit as u64 {
        return Err(bad(field, format!("{v} is out of range 0..{limit}")));
    }
    u32::try_from(v).map_err(|_| bad(field, format!("{v} does not fit in u32")))
}

fn build_tree(t: &RawTree, e: usize, n_features: usize) -> Result<Tree, SluiceErr> {
    let f = |name: &str| format!("estimators[{e}].{name}");
    let n = t.children_left.len();
    if n == 0 {
        return Err(bad(&f("children_left"), "a tree needs at least one node"));
    }
    if n > u32::MAX as usize {
        return Err(bad(&f("children_left"), "too many nodes"));
    }
    for (name, len) in [
        ("children_right", t.children_right.len()),
        ("feature", t.feature.len()),
        ("threshold", t.threshold.len()),
        ("n_node_samples", t.n_node_samples.len()),
        ("missing_go_to_left", t.missing_go_to_left.len()),
    ] {
        if len != n {
            return Err(bad(
                &f(name),
                format!("has {len} entries, children_left has {n}"),
            ));
        }
    }
    if t.features.is_empty() {
        return Err(bad(
            &f("features"),
            "an estimator needs at least one column",
        ));
    }
    let mut columns = Vec::with_capacity(t.features.len());
    for (k, &c) in t.features.iter().enumerate() {
        columns.push(to_u32(c, &format!("{}[{k}]", f("features")), n_features)?);
    }
    // Depth of each node; children come after their parent, each node has one parent.
    let mut depth: Vec<Option<u32>> = vec![None; n];
    // sklearn's `compute_node_depths` counts the root as depth 1 (hence its `- 1.0`).
    depth[0] = Some(1);
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let (l, r) = (t.children_left[i], t.children_right[i]);
        let d = depth[i];
        if l == LEAF || r == LEAF {
            if l != r {
                return Err(bad(
                    &f(&format!("children_left[{i}]")),
                    format!("node {i} has one child only ({l}, {r})"),
                ));
            }
            let samples = t.n_node_samples[i];
            if samples < 1 {
                return Err(bad(
                    &f(&format!("n_node_samples[{i}]")),
                    format!("a leaf needs >= 1 sample, got {samples}"),
                ));
            }
            // Unreachable leaves are never visited; give them a harmless value.
            let depth_f = f64::from(d.unwrap_or(1));
            let term = depth_f + average_path_length(samples as f64) - 1.0;
            nodes.push(Node {
                column: 0,
                left: 0,
                right: 0,
                missing_left: false,
                value: term,
            });
            continue;
        }
        for (name, c) in [("children_left", l), ("children_right", r)] {
            if c <= i as i64 || c >= n as i64 {
                return Err(bad(
                    &f(&format!("{name}[{i}]")),
                    format!("child {c} of node {i} must be in {}..{n}", i + 1),
                ));
            }
            let c = c as usize;
            if depth[c].is_some() {
                return Err(bad(
                    &f(&format!("{name}[{i}]")),
                    format!("node {c} has more than one parent"),
                ));
            }
            depth[c] = d.map(|d| d + 1);
        }
        let feat = to_u32(t.feature[i], &f(&format!("feature[{i}]")), columns.len())?;
        let thr = t.threshold[i];
        if thr.is_nan() {
            return Err(bad(&f(&format!("threshold[{i}]")), "NaN split threshold"));
        }
        let m = t.missing_go_to_left[i];
        if m > 1 {
            return Err(bad(
                &f(&format!("missing_go_to_left[{i}]")),
                format!("must be 0 or 1, got {m}"),
            ));
        }
        nodes.push(Node {
            column: columns[feat as usize],
            left: l as u32,
            right: r as u32,
            missing_left: m == 1,
            value: thr,
        });
    }
    Ok(Tree { nodes })
}

impl IsolationForest {
    /// Parse and validate the JSON export.
    pub fn from_json(text: &str) -> Result<Self, SluiceErr> {
        let raw: RawModel =
            serde_json::from_str(text).map_err(|e| SluiceErr::Model(format!("model JSON: {e}")))?;
        if raw.format != FORMAT {
            return Err(bad(
                "format",
                format!("expected {FORMAT:?}, got {:?}", raw.format),
            ));
        }
        if raw.format_version != FORMAT_VERSION {
            return Err(bad(
                "format_version",
                format!(
                    "this module reads version {FORMAT_VERSION}, got {}",
                    raw.format_version
                ),
            ));
        }
        if raw.n_features == 0 || raw.n_features > u32::MAX as usize {
            return Err(bad(
                "n_features",
                format!("{} is out of range", raw.n_features),
            ));
        }
        if let Some(names) = &raw.feature_names {
            if names.len() != raw.n_features {
                return Err(bad(
                    "feature_names",
                    format!(
                        "has {} names, n_features is {}",
                        names.len(),
                        raw.n_features
                    ),
                ));
            }
        }
        if raw.impute.len() != raw.n_features {
            return Err(bad(
                "impute",
                format!(
                    "has {} values, n_features is {}",
                    raw.impute.len(),
                    raw.n_features
                ),
            ));
        }
        if let Some(i) = raw.impute.iter().position(|v| !v.is_finite()) {
            return Err(bad(&format!("impute[{i}]"), "must be finite"));
        }
        if !(raw.max_samples >= 1.0
            && raw.max_samples.fract() == 0.0
            && raw.max_samples.is_finite())
        {
            return Err(bad(
                "max_samples",
                format!("must be an integer >= 1, got {}", raw.max_samples),
            ));
        }
        if !raw.offset.is_finite() {
            return Err(bad("offset", "must be finite"));
        }
        if let Some(t) = raw.threshold {
            if !t.is_finite() {
                return Err(bad("threshold", "must be finite"));
            }
        }
        if raw.estimators.is_empty() {
            return Err(bad("estimators", "needs at least one estimator"));
        }
        let trees = raw
            .estimators
            .iter()
            .enumerate()
            .map(|(e, t)| build_tree(t, e, raw.n_features))
            .collect::<Result<Vec<_>, _>>()?;
        let denominator = trees.len() as f64 * average_path_length(raw.max_samples);
        Ok(IsolationForest {
            n_features: raw.n_features,
            feature_names: raw.feature_names,
            impute: raw.impute,
            max_samples: raw.max_samples,
            offset: raw.offset,
            threshold: raw.threshold,
            trees,
            denominator,
        })
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }
    pub fn n_estimators(&self) -> usize {
        self.trees.len()
    }
    pub fn max_samples(&self) -> f64 {
        self.max_samples
    }
    pub fn offset(&self) -> f64 {
        self.offset
    }
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }
    pub fn feature_names(&self) -> Option<&[String]> {
        self.feature_names.as_deref()
    }
    pub fn impute(&self) -> &[f64] {
        &self.impute
    }

    /// Score one row (sklearn's `score_samples`: lower = more abnormal).
    pub fn score(&self, row: &[f64]) -> Result<f64, SluiceErr> {
        if row.len() != self.n_features {
            return Err(SluiceErr::Value(format!(
                "expected {} features, got {}",
                self.n_features,
                row.len()
            )));
        }
        let mut buf = vec![0f32; self.n_features];
        Ok(self.score_into(row, &mut buf))
    }

    /// Score `rows.len() / n_features` rows laid out row-major.
    pub fn score_many(&self, rows: &[f64]) -> Result<Vec<f64>, SluiceErr> {
        if !rows.len().is_multiple_of(self.n_features) {
            return Err(SluiceErr::Value(format!(
                "{} values are not a whole number of rows of {} features",
                rows.len(),
                self.n_features
            )));
        }
        // Tree-major over blocks of rows: one tree's nodes stay in cache for the whole
        // block. Each row still sums its trees in estimator order (same rounding).
        const BLOCK: usize = 256;
        let nf = self.n_features;
        let mut out = Vec::with_capacity(rows.len() / nf);
        let mut buf = vec![0f32; BLOCK * nf];
        let mut totals = [0f64; BLOCK];
        for block in rows.chunks(BLOCK * nf) {
            let n = block.len() / nf;
            for (b, (&x, &m)) in buf
                .iter_mut()
                .zip(block.iter().zip(self.impute.iter().cycle()))
            {
                *b = if x.is_nan() { m as f32 } else { x as f32 };
            }
            totals[..n].fill(0.0);
            for t in &self.trees {
                for (i, total) in totals[..n].iter_mut().enumerate() {
                    *total += t.leaf_term(&buf[i * nf..(i + 1) * nf]);
                }
            }
            out.extend(totals[..n].iter().map(|&total| self.finish(total)));
        }
        Ok(out)
    }

    #[inline]
    fn finish(&self, total: f64) -> f64 {
        if self.denominator == 0.0 {
            return -1.0;
        }
        -(2f64.powf(-(total / self.denominator)))
    }

    #[inline]
    fn score_into(&self, row: &[f64], buf: &mut [f32]) -> f64 {
        for ((b, &x), &m) in buf.iter_mut().zip(row).zip(&self.impute) {
            *b = if x.is_nan() { m as f32 } else { x as f32 };
        }
        let mut total = 0.0f64;
        for t in &self.trees {
            total += t.leaf_term(buf);
        }
        self.finish(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-feature forest: one stump on column 1, one leaf-only tree.
    fn good() -> serde_json::Value {
        serde_json::json!({
            "format": FORMAT, "format_version": 1, "n_features": 2,
            "feature_names": ["a", "b"], "impute": [0.5, 1.5],
            "max_samples": 4, "offset": -0.5, "threshold": -0.6,
            "estimators": [
                {"features": [0, 1], "children_left": [1, -1, -1], "children_right": [2, -1, -1],
                 "feature": [1, -2, -2], "threshold": [1.0, -2.0, -2.0],
                 "n_node_samples": [4, 3, 1], "missing_go_to_left": [1, 0, 0]},
                {"features": [1], "children_left": [-1], "children_right": [-1],
                 "feature": [-2], "threshold": [-2.0], "n_node_samples": [4],
                 "missing_go_to_left": [0]}
            ]
        })
    }

    fn load(v: &serde_json::Value) -> Result<IsolationForest, SluiceErr> {
        IsolationForest::from_json(&v.to_string())
    }

    fn err_of(v: &serde_json::Value) -> String {
        match load(v) {
            Err(SluiceErr::Model(m)) => m,
            Err(e) => panic!("expected a model error, got {e}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn average_path_length_matches_sklearn_values() {
        assert_eq!(average_path_length(0.0), 0.0);
        assert_eq!(average_path_length(1.0), 0.0);
        assert_eq!(average_path_length(2.0), 1.0);
        assert!((average_path_length(3.0) - 1.207_392_357_589_623).abs() < 1e-15);
        // sklearn: _average_path_length([256]) == 10.244770920119917
        assert!((average_path_length(256.0) - 10.244_770_920_119_917).abs() < 1e-14);
    }

    #[test]
    fn scores_by_hand() {
        let m = load(&good()).unwrap();
        let c4 = average_path_length(4.0);
        let c3 = average_path_length(3.0);
        let denom = 2.0 * c4;
        // b = 0.0 <= 1.0: left leaf (depth 2, 3 samples); tree 2: root leaf (depth 1, 4 samples).
        let left = (2.0 + c3 - 1.0) + (1.0 + c4 - 1.0);
        assert_eq!(m.score(&[9.0, 0.0]).unwrap(), -(2f64.powf(-(left / denom))));
        // b = 2.0: right leaf (depth 2, 1 sample).
        let right = (2.0 + 0.0 - 1.0) + (1.0 + c4 - 1.0);
        assert_eq!(
            m.score(&[9.0, 2.0]).unwrap(),
            -(2f64.powf(-(right / denom)))
        );
        // NaN in b is imputed with 1.5 → right.
        assert_eq!(
            m.score(&[f64::NAN, f64::NAN]).unwrap(),
            m.score(&[0.0, 1.5]).unwrap()
        );
        let many = m.score_many(&[9.0, 0.0, 9.0, 2.0]).unwrap();
        assert_eq!(
            many,
            vec![m.score(&[9.0, 0.0]).unwrap(), m.score(&[9.0, 2.0]).unwrap()]
        );
    }

    #[test]
    fn batch_equals_per_row_across_blocks() {
        let m = load(&good()).unwrap();
        let rows: Vec<f64> = (0..1000)
            .map(|i| {
                if i % 7 == 0 {
                    f64::NAN
                } else {
                    (i % 5) as f64 * 0.5
                }
            })
            .collect();
        let many = m.score_many(&rows).unwrap();
        assert_eq!(many.len(), 500);
        for (i, r) in rows.chunks(2).enumerate() {
            assert_eq!(many[i], m.score(r).unwrap(), "row {i}");
        }
    }

    #[test]
    fn compares_as_float32() {
        // 1.00000001 rounds to 1.0f32, so it goes left like sklearn (float32 input).
        let m = load(&good()).unwrap();
        assert_eq!(
            m.score(&[0.0, 1.000_000_01]).unwrap(),
            m.score(&[0.0, 1.0]).unwrap()
        );
        assert_ne!(
            m.score(&[0.0, 1.0001]).unwrap(),
            m.score(&[0.0, 1.0]).unwrap()
        );
    }

    #[test]
    fn wrong_row_lengths_are_value_errors() {
        let m = load(&good()).unwrap();
        assert!(matches!(m.score(&[1.0]), Err(SluiceErr::Value(_))));
        assert!(matches!(
            m.score_many(&[1.0, 2.0, 3.0]),
            Err(SluiceErr::Value(_))
        ));
        assert_eq!(m.score_many(&[]).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn loader_errors_name_the_field() {
        type Mutate = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("'format'", Box::new(|v| v["format"] = "xgboost".into())),
            (
                "'format_version'",
                Box::new(|v| v["format_version"] = 2.into()),
            ),
            ("'n_features'", Box::new(|v| v["n_features"] = 0.into())),
            (
                "'feature_names'",
                Box::new(|v| v["feature_names"] = serde_json::json!(["a"])),
            ),
            (
                "'impute'",
                Box::new(|v| v["impute"] = serde_json::json!([1.0])),
            ),
            ("'max_samples'", Box::new(|v| v["max_samples"] = 0.5.into())),
            (
                "'estimators'",
                Box::new(|v| v["estimators"] = serde_json::json!([])),
            ),
            (
                "'estimators[0].children_right'",
                Box::new(|v| v["estimators"][0]["children_right"] = serde_json::json!([2, -1])),
            ),
            (
                "'estimators[0].features[1]'",
                Box::new(|v| v["estimators"][0]["features"] = serde_json::json!([0, 7])),
            ),
            (
                "'estimators[0].feature[0]'",
                Box::new(|v| v["estimators"][0]["feature"] = serde_json::json!([2, -2, -2])),
            ),
            (
                "'estimators[0].children_left[0]'",
                Box::new(|v| v["estimators"][0]["children_left"] = serde_json::json!([0, -1, -1])),
            ),
            (
                "'estimators[0].children_left[0]'",
                Box::new(|v| v["estimators"][0]["children_left"] = serde_json::json!([-1, -1, -1])),
            ),
            (
                "'estimators[0].children_right[0]'",
                Box::new(|v| v["estimators"][0]["children_right"] = serde_json::json!([1, -1, -1])),
            ),
            (
                "'estimators[0].n_node_samples[2]'",
                Box::new(|v| v["estimators"][0]["n_node_samples"] = serde_json::json!([4, 3, 0])),
            ),
            (
                "'estimators[0].missing_go_to_left[0]'",
                Box::new(|v| {
                    v["estimators"][0]["missing_go_to_left"] = serde_json::json!([2, 0, 0])
                }),
            ),
            (
                "'estimators[1].features'",
                Box::new(|v| v["estimators"][1]["features"] = serde_json::json!([])),
            ),
        ];
        for (needle, mutate) in cases {
            let mut v = good();
            mutate(&mut v);
            let msg = err_of(&v);
            assert!(msg.contains(needle), "{needle} not in {msg:?}");
        }
    }

    #[test]
    fn malformed_json_and_missing_fields_are_model_errors() {
        assert!(matches!(
            IsolationForest::from_json("{"),
            Err(SluiceErr::Model(_))
        ));
        assert!(matches!(
            IsolationForest::from_json("[]"),
            Err(SluiceErr::Model(_))
        ));
        let mut v = good();
        v.as_object_mut().unwrap().remove("offset");
        assert!(err_of(&v).contains("offset"));
        let mut v = good();
        v["estimators"][0]["thresholds"] = serde_json::json!([1.0]);
        assert!(err_of(&v).contains("thresholds"));
        let mut v = good();
        v["impute"] = serde_json::json!([0.5, "x"]);
        assert!(err_of(&v).contains("invalid type"));
    }

    #[test]
    fn single_sample_forest_scores_minus_one() {
        let mut v = good();
        v["max_samples"] = 1.into();
        let m = load(&v).unwrap();
        assert_eq!(m.score(&[0.0, 0.0]).unwrap(), -1.0);
    }
}
