//! The copy plan of the CUDA loader: every tensor of every unit, in load order, cut into pieces
//! packed into fixed-size chunks (one pinned staging buffer each; a chunk holds pieces of one unit
//! only), with what must follow each
//! chunk on the load stream (a device dequantization once a tensor is complete, the unit's event
//! once a unit is complete).

use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::load::plan::LoadPlan;
use crate::model::ModelSpec;

use super::layout::{Dest, Layout};

/// How a tensor reaches its place in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Bytes copied as they are (F16 matrices, F32 vectors).
    Direct,
    /// Raw bytes copied to the device staging area, then dequantized to F16 into place.
    Dequant,
    /// A non-F32 vector: dequantized to F32 on the host while staging (vectors are small).
    HostF32,
}

/// Part of one tensor staged in a chunk.
#[derive(Clone, Debug)]
pub struct Piece {
    pub tensor: TensorInfo,
    pub route: Route,
    /// Byte range of the tensor's file data (whole tensor for `HostF32`).
    pub src_start: u64,
    pub src_len: u64,
    /// Bytes in the staging buffer (== src_len except for `HostF32`).
    pub staged_len: usize,
    pub slot_off: usize,
    /// Device byte offset: into the arena (Direct, HostF32) or the device staging area (Dequant).
    pub dst_off: usize,
    /// Residency slot of the unit this piece belongs to.
    pub unit: usize,
}

#[derive(Clone, Debug)]
pub enum After {
    /// Dequantize `n` elements of `ty` from the device staging area to arena offset `dst_off`.
    Dequant {
        ty: GgmlType,
        n: u64,
        dst_off: usize,
        /// The tensor's name (for the non-finite check of its F16 result).
        name: String,
    },
    /// Every byte of unit `slot` is in place.
    UnitDone { slot: usize },
}

#[derive(Clone, Debug, Default)]
pub struct Chunk {
    pub pieces: Vec<Piece>,
    pub after: Vec<After>,
    pub used: usize,
}

/// The chunks in order, and the device staging size the dequantized tensors need.
pub struct CopyPlan {
    pub chunks: Vec<Chunk>,
    pub stage_bytes: usize,
}

impl CopyPlan {
    pub fn new(
        file: &GgufFile,
        spec: &ModelSpec,
        plan: &LoadPlan,
        layout: &Layout,
        chunk: usize,
    ) -> Result<CopyPlan, String> {
        let mut chunks = vec![Chunk::default()];
        let mut stage_bytes = 0usize;
        for (slot, unit) in plan.units.iter().enumerate() {
            // Chunks never mix units: a unit's read error (or injected fault) then cannot hold
            // back the units before it, and the throttle paces whole units.
            if chunks.last().is_some_and(|c| c.used > 0) {
                chunks.push(Chunk::default());
            }
            for name in &unit.tensors {
                let t = file
                    .tensor(name)
                    .ok_or_else(|| format!("tensor '{name}' is missing"))?;
                let dest = layout
                    .dest(&spec.hp, name)
                    .ok_or_else(|| format!("tensor '{name}' has no place in the CUDA layout"))?;
                let (route, dst_off) = match dest {
                    Dest::F16 { off } if t.ty == GgmlType::F16 => (Route::Direct, off),
                    Dest::F16 { off } => (Route::Dequant, off),
                    Dest::F32 { off } if t.ty == GgmlType::F32 => (Route::Direct, off),
                    Dest::F32 { off } => (Route::HostF32, off),
                };
                match route {
                    Route::HostF32 => {
                        let staged = usize::try_from(t.n_elems * 4).map_err(|e| e.to_string())?;
                        if staged > chunk {
                            return Err(format!(
                                "vector '{name}' ({staged} bytes as F32) exceeds a staging buffer"
                            ));
                        }
                        if chunks.last().is_some_and(|c| c.used + staged > chunk) {
                            chunks.push(Chunk::default());
                        }
                        let c = chunks.last_mut().ok_or("no chunk")?;
                        c.pieces.push(Piece {
                            tensor: t.clone(),
                            route,
                            src_start: 0,
                            src_len: t.n_bytes,
                            staged_len: staged,
                            slot_off: c.used,
                            dst_off,
                            unit: slot,
                        });
                        c.used += staged;
                    }
                    Route::Direct | Route::Dequant => {
                        let total = usize::try_from(t.n_bytes).map_err(|e| e.to_string())?;
                        if route == Route::Dequant {
                            stage_bytes = stage_bytes.max(total);
                        }
                        let mut at = 0usize;
                        while at < total {
                            if chunks.last().is_some_and(|c| c.used == chunk) {
                                chunks.push(Chunk::default());
                            }
                            let c = chunks.last_mut().ok_or("no chunk")?;
                            let len = (total - at).min(chunk - c.used);
                            let dst = if route == Route::Dequant {
                                at
                            } else {
                                dst_off + at
                            };
                            c.pieces.push(Piece {
                                tensor: t.clone(),
                                route,
                                src_start: at as u64,
                                src_len: len as u64,
                                staged_len: len,
                                slot_off: c.used,
                                dst_off: dst,
                                unit: slot,
                            });
                            c.used += len;
                            at += len;
                        }
                        if route == Route::Dequant {
                            chunks
                                .last_mut()
                                .ok_or("no chunk")?
                                .after
                                .push(After::Dequant {
                                    ty: t.ty,
                                    n: t.n_elems,
                                    dst_off,
                                    name: t.name.clone(),
                                });
                            // The staging area is reused by the next dequantized tensor: its bytes
                            // must arrive in a later chunk, after this dequantization.
                            chunks.push(Chunk::default());
                        }
                    }
                }
            }
            chunks
                .last_mut()
                .ok_or("no chunk")?
                .after
                .push(After::UnitDone { slot });
        }
        chunks.retain(|c| !c.pieces.is_empty() || !c.after.is_empty());
        Ok(CopyPlan {
            chunks,
            stage_bytes,
        })
    }
}
