//! One lone sequence on the GPU (the CLI, `bench` and `check-cuda`), in the contiguous KV cache
//! reserved with the weights: a prompt runs as `Pass::rows` in chunks of up to `MAX_BATCH`, a
//! decode token as `Pass::decode` (replayed from a captured graph once every unit is resident).
//! The engine's batched runner (`runner.rs`) issues the same passes over its paged pool.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::kernels::{Paged, RowsAt};
use super::layout::MAX_BATCH;
use super::pass::{KvPlace, Pass};
use super::res::{wait_done, Res};
use super::CudaModel;
use crate::backend::{BackendError, Session};

pub struct CudaSession {
    model: Arc<CudaModel>,
    res: Option<Res>,
    ctx: usize,
    len: usize,
    /// Token ids of the whole sequence in pinned memory (a prompt's chunks are copied from it).
    ids_host: Option<super::driver::Pinned>,
}

impl CudaSession {
    pub fn new(model: Arc<CudaModel>, ctx: usize) -> CudaSession {
        CudaSession {
            model,
            res: None,
            ctx,
            len: 0,
            ids_host: None,
        }
    }

    fn res(&mut self) -> Result<&mut Res, BackendError> {
        if self.res.is_none() {
            self.res = Some(Res::take_or_make(&self.model, 1)?);
        }
        self.res
            .as_mut()
            .ok_or_else(|| BackendError::Device("no session resources".into()))
    }

    /// The arena's contiguous KV cache.
    fn kv(&self, res: &Res) -> KvPlace {
        let l = &res.dev.layout;
        KvPlace {
            layers: l
                .layers
                .iter()
                .map(|ly| (res.dev.ptr(ly.k_cache), res.dev.ptr(ly.v_cache)))
                .collect(),
        }
    }

    fn check(&self, tokens: &[u32]) -> Result<(), BackendError> {
        let vocab = self.model.hp.vocab;
        if tokens.is_empty() {
            return Err(BackendError::EmptyInput);
        }
        let needed = self.len + tokens.len();
        if needed > self.ctx {
            return Err(BackendError::ContextFull {
                needed,
                capacity: self.ctx,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(BackendError::TokenOutOfRange { id, vocab });
        }
        match self.model.residency.wait_error() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Issue the prompt's chunks; each chunk's token ids are copied from pinned memory.
    fn issue_prompt(&mut self, tokens: &[u32], pass: &mut Pass) -> Result<(), BackendError> {
        let e = BackendError::Device;
        let pos0 = self.len;
        if self.ids_host.is_none() {
            let bytes = self.ctx.max(1) * 4;
            self.ids_host = Some(super::driver::Pinned::alloc(bytes, false).map_err(e)?);
        }
        let (Some(res), Some(ids_host)) = (self.res.as_ref(), self.ids_host.as_mut()) else {
            return Err(BackendError::Device("no session resources".into()));
        };
        let ids = bytemuck::cast_slice_mut::<u8, u32>(ids_host.as_mut_slice());
        ids[pos0..pos0 + tokens.len()].copy_from_slice(tokens);
        let ids_dev = res.dev.ptr(res.dev.layout.scratch.ids);
        let mut at = 0;
        while at < tokens.len() {
            let n = (tokens.len() - at).min(MAX_BATCH);
            let last = at + n == tokens.len();
            let src = unsafe { ids_host.ptr.add((pos0 + at) * 4) };
            unsafe { super::driver::copy_htod(ids_dev, src, n * 4, pass.s).map_err(e)? };
            pass.rows(&res.blas, ids_dev, n, &RowsAt::contiguous(pos0 + at))
                .map_err(e)?;
            if last {
                let logits_dev = res.dev.ptr(res.dev.layout.scratch.logits);
                pass.head(&res.blas, &[n - 1], 0, logits_dev).map_err(e)?;
                let bytes = self.model.hp.vocab * 4;
                unsafe {
                    super::driver::copy_dtoh(res.logits_host.ptr, logits_dev, bytes, pass.s)
                        .map_err(e)?
                };
            }
            at += n;
            // The next chunk's length may be a GEMM shape whose kernels are not loaded yet,
            // and loading one synchronises the context: never while this stream waits on the
            // loader (see `Pass::gate`).
            if !last && !pass.gated.is_empty() {
                res.done.record(pass.s).map_err(e)?;
                wait_done(&self.model, &res.done, true)?;
            }
        }
        Ok(())
    }
}

impl Drop for CudaSession {
    fn drop(&mut self) {
        if let Some(r) = &mut self.res {
            let _ = r.stream.sync();
            r.log_timing();
        }
        // Parked before the sequence is given back, so the next owner finds it.
        *self.model.parked.lock() = self.res.take();
        self.model.session_taken.store(false, Ordering::Release);
    }
}

impl Session for CudaSession {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError> {
        self.check(tokens)?;
        let model = self.model.clone();
        let pos0 = self.len;
        self.res()?;
        let Some(res) = self.res.as_mut() else {
            return Err(BackendError::Device("no session resources".into()));
        };
        let (dev, stream) = (res.dev.clone(), res.stream.clone());
        dev.gpu.bind().map_err(BackendError::Device)?;
        let kv = self.kv(self.res.as_ref().expect("made above"));
        let t_issue = Instant::now();
        let mut pass = Pass::new(&model, &dev, &stream, &kv);
        let e = BackendError::Device;
        if let [id] = tokens {
            let res = self.res.as_mut().expect("made above");
            res.set_decode_params(pos0, pos0, *id, &[]);
            let all = model.residency.all_resident();
            res.issue_decode(&mut pass, 0, Paged::CONTIGUOUS, all, true)
                .map_err(e)?;
        } else {
            self.issue_prompt(tokens, &mut pass)?;
        }
        let res = self.res.as_mut().expect("made above");
        let gated = std::mem::take(&mut pass.gated);
        res.done.record(&stream).map_err(e)?;
        wait_done(&model, &res.done, !gated.is_empty())?;
        drop(pass); // the kernel-loading lock, if a gate took it
        model.add_waited(&gated, t_issue);
        if let Some((t0, t1, gpu, call)) = &mut res.timing {
            if tokens.len() == 1 && gated.is_empty() && res.graph.is_some() {
                gpu.push(t0.elapsed_ms(t1).map_err(e)? as f64 * 1e3);
                call.push(t_issue.elapsed().as_secs_f64() * 1e6);
            }
        }
        self.len += tokens.len();
        let vocab = model.hp.vocab;
        let res = self.res.as_ref().expect("made above");
        Ok(&bytemuck::cast_slice::<u8, f32>(res.logits_host.as_slice())[..vocab])
    }

    fn reset(&mut self) {
        self.len = 0;
    }

    fn prepare(&mut self) -> Result<(), BackendError> {
        let made = self.res().and_then(|r| r.load_blas_kernels());
        // The kernel preload waits for this (whatever the outcome), so the two do not contend.
        self.model.prepared.set();
        made
    }

    fn len(&self) -> usize {
        self.len
    }
}
