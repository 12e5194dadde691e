//! `export_dat`: a trained model as an NVFP4 `.dat` file that inference
//! (and the original tools) load.
//!
//! Every weight is written: projections re-quantized from their master
//! weights (the original re-used stale packed data), embeddings and norms
//! as trained (the original dropped them), and for a tied model whose
//! `like` file carries an `lm_head`, the quantized trained embedding (the
//! original ignored the tie). With `like`, its keys, entry order and
//! element types are kept; entries the model does not know are copied.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use dat_format::{
    DatFile, DatWriter, ElemType, Nvfp4Pair, GLOBAL_SCALE_SUFFIX, QDATA_SUFFIX, SCALE_SUFFIX,
};
use nvfp4_kernels::{Nvfp4Host, ScaleMode, BLOCK_SIZE};
use tch::Kind;

use crate::error::{Error, Result};
use crate::model::Qwen3Model;
use crate::weights::model_weights::ModelWeights;
use crate::weights::schema::{is_packed_key, EMBED_KEY};

/// Which entry of an NVFP4 pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Qdata,
    Scale,
    GlobalScale,
}

/// One entry of the output file, in output order.
#[derive(Debug)]
enum Planned {
    /// A part of the NVFP4 form of model weight `source`.
    Quantized {
        key: String,
        elem: ElemType,
        part: Part,
        source: String,
    },
    /// A raw weight; `effective` = the dequantized values of a projection.
    Dense {
        key: String,
        elem: ElemType,
        source: String,
        effective: bool,
    },
    /// An entry of `like` the model has no weight for, copied verbatim.
    Copy { index: usize },
}

/// The whole output, decided (and checked) before the file is created.
struct Plan {
    entries: Vec<Planned>,
    /// Scale mode per quantized source (two-level where `like` had a global scale).
    modes: HashMap<String, ScaleMode>,
}

/// Writes `model` to `path` as an NVFP4 `.dat`, atomically (temp file,
/// fsync, rename). With `like` (typically the file the model was loaded
/// from; it may be `path` itself), the output has its keys, entry order and
/// element types; otherwise embeddings are bf16 and norms f32, in HF order.
pub fn export_dat(model: &Qwen3Model, path: &Path, like: Option<&DatFile>) -> Result<()> {
    let weights = ModelWeights::new(model);
    let plan = match like {
        Some(like) => plan_like(&weights, like)?,
        None => plan_default(&weights),
    };
    let mut writer = DatWriter::create(path, plan.entries.len())?;
    let mut cache = QuantCache::new(&plan);
    for entry in &plan.entries {
        match entry {
            Planned::Quantized {
                key,
                elem,
                part,
                source,
            } => {
                let host = cache.get(&weights, source, plan.mode(source))?;
                let (rows, cols) = (host.rows, host.cols);
                match part {
                    Part::Qdata => writer.write_raw(key, *elem, &[rows, cols / 2], &host.qdata)?,
                    Part::Scale => {
                        writer.write_raw(key, *elem, &[rows, cols / BLOCK_SIZE], &host.scale)?
                    }
                    // Absent global scale = 1: the original files' convention.
                    Part::GlobalScale => {
                        let g = host.global_scale.unwrap_or(1.0);
                        writer.write_raw(key, *elem, &[1], &g.to_le_bytes())?
                    }
                }
                cache.done(source);
            }
            Planned::Dense {
                key,
                elem,
                source,
                effective,
            } => {
                let stored = if *effective {
                    None
                } else {
                    weights.dense(source)?
                };
                let t = match stored {
                    Some(t) => t, // converted to `elem` by the writer, nothing else
                    None => weights.effective(source, plan.mode(source), Kind::Float)?,
                };
                writer.write_tensor(key, *elem, &t)?;
            }
            Planned::Copy { index } => {
                let like = like.expect("copies are planned only from `like`");
                let e = &like.entries()[*index];
                writer.write_raw(&e.key, e.elem, &e.shape, like.bytes(e))?;
            }
        }
    }
    writer.finish()?;
    tracing::info!(
        "exported {} entries to {}",
        plan.entries.len(),
        path.display()
    );
    Ok(())
}

impl Plan {
    fn mode(&self, source: &str) -> ScaleMode {
        self.modes.get(source).copied().unwrap_or(ScaleMode::Single)
    }
}

/// No template: every weight in HF order, pairs as `<key>.qdata`/`.scale`.
fn plan_default(weights: &ModelWeights<'_>) -> Plan {
    let mut entries = Vec::new();
    for key in weights.keys_hf_order() {
        entries.extend(default_entries(weights, key));
    }
    Plan {
        entries,
        modes: HashMap::new(),
    }
}

/// The entries of one weight when no template says otherwise.
fn default_entries(weights: &ModelWeights<'_>, key: &str) -> Vec<Planned> {
    if !is_packed_key(key) {
        // Embeddings in bf16 (the original's files), norms in f32 (computed in f32).
        let elem = if key == EMBED_KEY {
            ElemType::BF16
        } else {
            ElemType::F32
        };
        return vec![Planned::Dense {
            key: key.into(),
            elem,
            source: key.into(),
            effective: false,
        }];
    }
    let part = |suffix: &str, elem, part| Planned::Quantized {
        key: format!("{key}{suffix}"),
        elem,
        part,
        source: key.into(),
    };
    let mut out = vec![
        part(QDATA_SUFFIX, ElemType::U8, Part::Qdata),
        part(SCALE_SUFFIX, ElemType::F8E4M3, Part::Scale),
    ];
    if weights.packed_global_scale(key).is_some() {
        out.push(part(GLOBAL_SCALE_SUFFIX, ElemType::F32, Part::GlobalScale));
    }
    out
}

/// Follows `like` entry by entry, then appends model weights it lacks.
fn plan_like(weights: &ModelWeights<'_>, like: &DatFile) -> Result<Plan> {
    let mut roles: HashMap<usize, (Part, &Nvfp4Pair)> = HashMap::new();
    for pair in like.nvfp4_pairs() {
        roles.insert(pair.qdata, (Part::Qdata, pair));
        roles.insert(pair.scale, (Part::Scale, pair));
        if let Some(g) = pair.global_scale {
            roles.insert(g, (Part::GlobalScale, pair));
        }
    }
    let mut plan = Plan {
        entries: Vec::new(),
        modes: HashMap::new(),
    };
    let mut covered = HashSet::new();
    for (index, e) in like.entries().iter().enumerate() {
        if let Some(&(part, pair)) = roles.get(&index) {
            plan_pair_entry(weights, like, &mut plan, &mut covered, index, part, pair)?;
        } else if weights.contains(&e.key) {
            check_shape(like, &e.key, &e.key, &e.shape, &weights.shape(&e.key))?;
            if !e.elem.is_float() {
                return Err(Error::ExportElemType {
                    like: like.path().to_path_buf(),
                    key: e.key.clone(),
                    elem: e.elem.to_string(),
                });
            }
            let effective = is_packed_key(&e.key);
            plan.entries.push(Planned::Dense {
                key: e.key.clone(),
                elem: e.elem,
                source: e.key.clone(),
                effective,
            });
            covered.insert(e.key.clone());
        } else {
            tracing::warn!(
                "{}: {:?} is not a model weight; copied unchanged",
                like.path().display(),
                e.key
            );
            plan.entries.push(Planned::Copy { index });
        }
    }
    for key in weights.keys_hf_order() {
        if !covered.contains(key) {
            tracing::warn!(
                "{:?} is not in {}; appended at the end",
                key,
                like.path().display()
            );
            plan.entries.extend(default_entries(weights, key));
        }
    }
    Ok(plan)
}

/// Plans one entry of an NVFP4 pair of `like`.
fn plan_pair_entry(
    weights: &ModelWeights<'_>,
    like: &DatFile,
    plan: &mut Plan,
    covered: &mut HashSet<String>,
    index: usize,
    part: Part,
    pair: &Nvfp4Pair,
) -> Result<()> {
    let e = &like.entries()[index];
    let weight_key = pair.weight_key();
    let Some(source) = weights.projection_source(&weight_key) else {
        tracing::warn!(
            "{}: {:?} is not a model weight; copied unchanged",
            like.path().display(),
            e.key
        );
        plan.entries.push(Planned::Copy { index });
        return Ok(());
    };
    if source != weight_key && part == Part::Qdata {
        tracing::warn!("tied model: writing the trained embedding, quantized, as {weight_key:?}");
    }
    check_shape(
        like,
        &pair.base,
        source,
        &[pair.rows, pair.cols],
        &weights.shape(source),
    )?;
    // A master is quantized like the file's pair: two-level iff it has a global scale.
    let mode = if pair.global_scale.is_some() {
        ScaleMode::TwoLevel
    } else {
        ScaleMode::Single
    };
    plan.modes.insert(source.to_string(), mode);
    let quantized = |key: String, elem, part| Planned::Quantized {
        key,
        elem,
        part,
        source: source.to_string(),
    };
    plan.entries.push(quantized(e.key.clone(), e.elem, part));
    // A frozen two-level weight needs its global scale even if `like` had none.
    if part == Part::Scale
        && pair.global_scale.is_none()
        && weights.packed_global_scale(source).is_some()
    {
        let key = format!("{}{GLOBAL_SCALE_SUFFIX}", pair.base);
        plan.entries
            .push(quantized(key, ElemType::F32, Part::GlobalScale));
    }
    covered.insert(weight_key);
    Ok(())
}

fn check_shape(
    like: &DatFile,
    key: &str,
    model_key: &str,
    expected: &[usize],
    got: &[usize],
) -> Result<()> {
    if expected == got {
        return Ok(());
    }
    Err(Error::ExportShapeMismatch {
        like: like.path().to_path_buf(),
        key: key.to_string(),
        model_key: model_key.to_string(),
        expected: expected.to_vec(),
        got: got.to_vec(),
    })
}

/// Quantized weights between the writes of their parts: each is quantized
/// once and dropped after its last part, so at most one pair is held.
struct QuantCache {
    remaining: HashMap<String, usize>,
    held: HashMap<String, Nvfp4Host>,
}

impl QuantCache {
    fn new(plan: &Plan) -> Self {
        let mut remaining = HashMap::new();
        for e in &plan.entries {
            if let Planned::Quantized { source, .. } = e {
                *remaining.entry(source.clone()).or_insert(0) += 1;
            }
        }
        Self {
            remaining,
            held: HashMap::new(),
        }
    }

    fn get(
        &mut self,
        weights: &ModelWeights<'_>,
        source: &str,
        mode: ScaleMode,
    ) -> Result<&Nvfp4Host> {
        if !self.held.contains_key(source) {
            let host = weights.quantized(source, mode)?;
            self.held.insert(source.to_string(), host);
        }
        Ok(&self.held[source])
    }

    fn done(&mut self, source: &str) {
        if let Some(n) = self.remaining.get_mut(source) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(source);
            }
        }
    }
}
