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
        let mut p = Packer {
            chunks: vec![Chunk::default()],
            chunk,
            stage_bytes: 0,
        };
        for (slot, unit) in plan.units.iter().enumerate() {
            // Chunks never mix units: a unit's read error (or injected fault) then cannot hold
            // back the units before it, and the throttle paces whole units.
            p.break_if_used();
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
                let at = Place { slot, dst_off };
                match route {
                    Route::HostF32 => p.host_f32(t, at)?,
                    Route::Direct | Route::Dequant => p.bytes(t, route, at)?,
                }
            }
            p.last()?.after.push(After::UnitDone { slot });
        }
        let Packer {
            mut chunks,
            stage_bytes,
            ..
        } = p;
        chunks.retain(|c| !c.pieces.is_empty() || !c.after.is_empty());
        Ok(CopyPlan {
            chunks,
            stage_bytes,
        })
    }
}

/// Where a tensor goes: its unit's residency slot and its device offset (`Piece::dst_off` for a
/// tensor copied as it is; the arena offset of its F16 result when dequantized).
#[derive(Clone, Copy)]
struct Place {
    slot: usize,
    dst_off: usize,
}

/// The chunks as they are being filled (`chunk` bytes each).
struct Packer {
    chunks: Vec<Chunk>,
    chunk: usize,
    stage_bytes: usize,
}

impl Packer {
    fn last(&mut self) -> Result<&mut Chunk, String> {
        self.chunks.last_mut().ok_or_else(|| "no chunk".to_string())
    }

    /// Start a new chunk unless the last one is still empty.
    fn break_if_used(&mut self) {
        if self.chunks.last().is_some_and(|c| c.used > 0) {
            self.chunks.push(Chunk::default());
        }
    }

    /// A vector dequantized to F32 on the host: whole, in one chunk.
    fn host_f32(&mut self, t: &TensorInfo, at: Place) -> Result<(), String> {
        let (name, chunk) = (&t.name, self.chunk);
        let staged = usize::try_from(t.n_elems * 4).map_err(|e| e.to_string())?;
        if staged > chunk {
            return Err(format!(
                "vector '{name}' ({staged} bytes as F32) exceeds a staging buffer"
            ));
        }
        if self.chunks.last().is_some_and(|c| c.used + staged > chunk) {
            self.chunks.push(Chunk::default());
        }
        let c = self.last()?;
        c.pieces.push(Piece {
            tensor: t.clone(),
            route: Route::HostF32,
            src_start: 0,
            src_len: t.n_bytes,
            staged_len: staged,
            slot_off: c.used,
            dst_off: at.dst_off,
            unit: at.slot,
        });
        c.used += staged;
        Ok(())
    }

    /// A tensor's bytes as they are, cut over as many chunks as they take; a dequantized one is
    /// then followed by its dequantization and a fresh chunk (the device staging area it was
    /// copied to is reused by the next such tensor, whose bytes must come after).
    fn bytes(&mut self, t: &TensorInfo, route: Route, at: Place) -> Result<(), String> {
        let total = usize::try_from(t.n_bytes).map_err(|e| e.to_string())?;
        let dequant = route == Route::Dequant;
        if dequant {
            self.stage_bytes = self.stage_bytes.max(total);
        }
        let chunk = self.chunk;
        let mut done = 0usize;
        while done < total {
            if self.chunks.last().is_some_and(|c| c.used == chunk) {
                self.chunks.push(Chunk::default());
            }
            let c = self.last()?;
            let len = (total - done).min(chunk - c.used);
            c.pieces.push(Piece {
                tensor: t.clone(),
                route,
                src_start: done as u64,
                src_len: len as u64,
                staged_len: len,
                slot_off: c.used,
                dst_off: if dequant { done } else { at.dst_off + done },
                unit: at.slot,
            });
            c.used += len;
            done += len;
        }
        if dequant {
            self.last()?.after.push(After::Dequant {
                ty: t.ty,
                n: t.n_elems,
                dst_off: at.dst_off,
                name: t.name.clone(),
            });
            self.chunks.push(Chunk::default());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::{write_random_model, RandomModelSpec, VocabSource, WeightDtype};

    /// A small BF16 model (its matrices dequantized on the device, its vectors copied as they
    /// are), packed into chunks smaller than its tensors.
    fn packed(chunk: usize) -> (CopyPlan, LoadPlan, GgufFile) {
        let path = std::env::temp_dir().join(format!("chunks-{}-{chunk}.gguf", std::process::id()));
        let spec = RandomModelSpec {
            family: crate::model::arch::Family::Qwen2,
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            vocab: VocabSource::Size(300),
            tied: false,
            dtype: WeightDtype::Bf16,
            seed: 5,
            context: 256,
            rope_base: 10_000.0,
            head_dim: None,
            sliding_window: None,
            rope_scaling: Default::default(),
        };
        write_random_model(&spec, &path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let spec = ModelSpec::from_file(&file).unwrap();
        let plan = LoadPlan::new(&file, &spec);
        let layout = Layout::new(&spec, 256);
        let copy = CopyPlan::new(&file, &spec, &plan, &layout, chunk).unwrap();
        (copy, plan, file)
    }

    #[test]
    fn chunks_hold_one_unit_cover_every_byte_once_and_never_two_dequantized_tensors() {
        let chunk = 3000;
        let (copy, plan, file) = packed(chunk);
        let mut covered = std::collections::HashMap::<String, u64>::new();
        let mut done_units = Vec::new();
        for c in &copy.chunks {
            assert!(c.used <= chunk);
            assert_eq!(c.used, c.pieces.iter().map(|p| p.staged_len).sum::<usize>());
            let units: std::collections::BTreeSet<usize> =
                c.pieces.iter().map(|p| p.unit).collect();
            assert!(units.len() <= 1, "a chunk mixes units {units:?}");
            let mut at = 0;
            for p in &c.pieces {
                assert_eq!(p.slot_off, at, "pieces packed end to end");
                at += p.staged_len;
                let seen = covered.entry(p.tensor.name.clone()).or_default();
                assert_eq!(p.src_start, *seen, "{}: bytes in order", p.tensor.name);
                *seen += p.src_len;
                assert!(
                    done_units.len() <= p.unit,
                    "a piece of unit {} after its end",
                    p.unit
                );
            }
            for a in &c.after {
                match a {
                    After::Dequant { name, .. } => {
                        assert_eq!(covered[name], file.tensor(name).unwrap().n_bytes);
                        // The staging area it reads holds no other tensor's bytes yet.
                        assert!(
                            c.pieces
                                .iter()
                                .all(|p| p.route != Route::Dequant || &p.tensor.name == name),
                            "{name}: another dequantized tensor in its chunk"
                        );
                    }
                    After::UnitDone { slot } => {
                        assert_eq!(*slot, done_units.len());
                        done_units.push(*slot);
                    }
                }
            }
        }
        assert_eq!(done_units.len(), plan.units.len());
        for unit in &plan.units {
            for name in &unit.tensors {
                let t = file.tensor(name).unwrap();
                assert_eq!(covered.get(name), Some(&t.n_bytes), "{name} covered once");
            }
        }
        assert!(copy
            .chunks
            .iter()
            .any(|c| c.pieces.iter().any(|p| p.src_start > 0)));
        assert!(
            copy.stage_bytes > chunk,
            "a dequantized tensor larger than a chunk"
        );
    }
}
