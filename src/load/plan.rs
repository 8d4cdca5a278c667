//! The load plan: which tensors form each unit and in what order units become resident.
//!
//! A unit is what gates execution: `embed` = `token_embd.weight`; `layer.i` = every `blk.i.*`
//! tensor; `head` = `output_norm.weight` + `output.weight` (just the norm when tied).

use crate::gguf::GgufFile;
use crate::model::names::{OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
use crate::model::ModelSpec;

/// What a unit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnitKind {
    Embed,
    Layer(usize),
    Head,
}

/// One unit of the plan.
#[derive(Clone, Debug)]
pub struct Unit {
    pub kind: UnitKind,
    pub name: String,
    pub tensors: Vec<String>,
    /// Bytes read from the file for this unit.
    pub bytes: u64,
}

/// Units in load order: embed, layers 0..n, head. Index `i` of `units` is the residency slot.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub units: Vec<Unit>,
}

impl LoadPlan {
    pub fn new(file: &GgufFile, spec: &ModelSpec) -> LoadPlan {
        let unit = |kind, name: String, tensors: Vec<String>| {
            let bytes = tensors
                .iter()
                .filter_map(|t| file.tensor(t))
                .map(|t| t.n_bytes)
                .sum();
            Unit {
                kind,
                name,
                tensors,
                bytes,
            }
        };
        let mut units = vec![unit(
            UnitKind::Embed,
            "embed".into(),
            vec![TOKEN_EMBD.into()],
        )];
        let layer_tensors = spec.layer_tensors();
        for i in 0..spec.hp.n_layer {
            units.push(unit(
                UnitKind::Layer(i),
                format!("layer.{i}"),
                layer_tensors.iter().map(|t| t.name(i)).collect(),
            ));
        }
        let mut head = vec![OUTPUT_NORM.to_string()];
        if !spec.tied {
            head.push(OUTPUT.into());
        }
        units.push(unit(UnitKind::Head, "head".into(), head));
        LoadPlan { units }
    }

    pub fn total_bytes(&self) -> u64 {
        self.units.iter().map(|u| u.bytes).sum()
    }

    /// Residency slot of a unit.
    pub fn slot(kind: UnitKind, n_layer: usize) -> usize {
        match kind {
            UnitKind::Embed => 0,
            UnitKind::Layer(i) => i + 1,
            UnitKind::Head => n_layer + 1,
        }
    }
}

/// Units that must be resident before READY: the embeddings and layer 0 (slots 0 and 1).
pub const READY_UNITS: usize = 2;
