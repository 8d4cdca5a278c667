//! The embedded kernel image (`cuda/*.cu`, compiled by build.rs) and one typed launcher per kernel.
//! Launch shapes follow the contract in each kernel file's header comment.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys::{self, CUdeviceptr, CUfunction};

use super::driver::{ck, Module, Stream};
use super::gemm_fixed::{FixedGemm, Kind};
use crate::gguf::GgmlType;

/// sm_90 SASS + compute_80 PTX of every kernel file.
static FATBIN: &[u8] = include_bytes!(env!("LAYERSTREAM_FATBIN"));

pub struct Kernels {
    _module: Module,
    embed_gather: CUfunction,
    rmsnorm_f16: CUfunction,
    rmsnorm_add: CUfunction,
    gated_mul: CUfunction,
    /// One per entry of [`GEMV_VARIANTS`].
    gemv_plain: Vec<CUfunction>,
    gemv_norm: Vec<CUfunction>,
    gemv_silu: Vec<CUfunction>,
    gemv_gelu: Vec<CUfunction>,
    /// One per entry of [`FETCH_CHUNKS`], after the streamed variant.
    gemv_qkv_rope: Vec<CUfunction>,
    /// Whether the decode products fetch their weight rows into registers first (the `_cN`
    /// variants with N > 0) where K allows; off with `LAYERSTREAM_CUDA_GEMV=streamed`.
    fetch: AtomicBool,
    /// Threads per block of the plain/norm/SwiGLU GEMVs: 256 unless `LAYERSTREAM_CUDA_GEMV_BLOCK`
    /// says otherwise (64 to 1024, a multiple of 32; for comparing block sizes).
    gemv_threads: u32,
    rope_qkv: CUfunction,
    attn_rows: CUfunction,
    attn_rows_split: CUfunction,
    attn_rows_merge: CUfunction,
    attn_decode: CUfunction,
    attn_reduce: CUfunction,
    attn_decode_merge: CUfunction,
    /// `sample.cu`'s three launches over a step's logit rows.
    logits_seg: [CUfunction; 3],
    dequant: Vec<(GgmlType, CUfunction)>,
    nonfinite_f16: CUfunction,
    nonfinite_f32: CUfunction,
    /// The batch-invariant product's instantiations (`cuda/gemm_fixed.cu`).
    gemm_fixed: FixedGemm,
}

unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

thread_local! {
    /// Whether launches on this thread of kernels that call `grid_dep_sync()` are programmatic
    /// dependent launches (see [`dependent_launches`]).
    static DEPENDENT: Cell<bool> = const { Cell::new(false) };
}

/// While the returned guard lives, this thread launches every kernel that begins with
/// `grid_dep_sync()` (common.cuh) as a programmatic dependent of the previous kernel in its
/// stream: it may start, and prefetch its weights, while that kernel finishes. Used for the
/// captured decode step, where each kernel is short and the launch gaps are a large share.
pub fn dependent_launches(on: bool) -> DependentGuard {
    DependentGuard(DEPENDENT.with(|d| d.replace(on)))
}

pub struct DependentGuard(bool);

/// Where each row of a pass sits and where its K/V go (rope_qkv, attn_rows): row t's position is
/// `*pos_dev + t` when `pos_dev` is set, else `row_pos[t]` when set, else `pos0 + t`; its K/V row
/// `slots[t]` when set, else the position; its sequence's block table at `tables + row_tab[t]`
/// (or `tables` when `row_tab` is 0; contiguous rows when `tables` is 0), `bs` positions a block.
/// Device pointers; 0 means absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowsAt {
    pub pos_dev: CUdeviceptr,
    pub row_pos: CUdeviceptr,
    pub pos0: usize,
    pub slots: CUdeviceptr,
    pub row_tab: CUdeviceptr,
    pub tables: CUdeviceptr,
    pub bs: usize,
}

impl RowsAt {
    /// One sequence in contiguous rows from position `pos0`.
    pub fn contiguous(pos0: usize) -> RowsAt {
        RowsAt {
            pos0,
            bs: 1,
            ..RowsAt::default()
        }
    }
}

/// A layer's Q/K/V post-processing (`rope_qkv`, `gemv_qkv_rope`): device pointers, 0 where the
/// layer has none (biases; per-head q/k norms, `head_dim` F32 each), its RoPE table (`head_dim / 2`
/// inverse frequencies, `HParams::inv_freq`), what cos and sin are scaled by
/// (`HParams::rope_mscale`) and the pair layout.
#[derive(Clone, Copy, Debug)]
pub struct QkvPost {
    pub bias: CUdeviceptr,
    pub q_norm: CUdeviceptr,
    pub k_norm: CUdeviceptr,
    pub inv_freq: CUdeviceptr,
    pub mscale: f32,
    /// RoPE pairs (2i, 2i + 1) (llama files' Q/K rows) rather than (i, i + head_dim/2).
    pub interleaved: bool,
}

impl Default for QkvPost {
    fn default() -> Self {
        QkvPost {
            bias: 0,
            q_norm: 0,
            k_norm: 0,
            inv_freq: 0,
            mscale: 1.0,
            interleaved: false,
        }
    }
}

/// How `attn_rows_split` splits each row's keys: `splits` ranges (at most 64) of `chunk` keys,
/// partials in `acc` (F32 `[rows, n_head, splits, head_dim]`) and `ml` (`[rows, n_head, splits, 2]`).
#[derive(Clone, Copy, Debug)]
pub struct RowsSplit {
    pub acc: CUdeviceptr,
    pub ml: CUdeviceptr,
    pub chunk: usize,
    pub splits: usize,
}

/// Most splits `attn_rows_merge` merges (two per lane).
pub const MAX_ROW_SPLITS: usize = 64;

/// A single sequence's block table on the device (`table` 0: contiguous rows), for the decode
/// attention.
#[derive(Clone, Copy, Debug)]
pub struct Paged {
    pub table: CUdeviceptr,
    pub bs: usize,
}

impl Paged {
    pub const CONTIGUOUS: Paged = Paged { table: 0, bs: 1 };
}

impl Drop for DependentGuard {
    fn drop(&mut self) {
        DEPENDENT.with(|d| d.set(self.0));
    }
}

/// Launch `f` with the given arguments (each a local whose address is passed). `launch!(dep ...)`
/// marks a kernel that starts with `grid_dep_sync()`, so it may be launched as a dependent.
macro_rules! launch {
    (dep $f:expr, $grid:expr, $block:expr, $smem:expr, $s:expr; $($arg:expr),* $(,)?) => {{
        let mut params: Vec<*mut c_void> = Vec::new();
        $( let mut _a = $arg; params.push(&mut _a as *mut _ as *mut c_void); )*
        // The argument locals above live until the end of this block, past the launch.
        launch_raw($f, $grid, $block, $smem, $s, &mut params, true)
    }};
    ($f:expr, $grid:expr, $block:expr, $smem:expr, $s:expr; $($arg:expr),* $(,)?) => {{
        let mut params: Vec<*mut c_void> = Vec::new();
        $( let mut _a = $arg; params.push(&mut _a as *mut _ as *mut c_void); )*
        launch_raw($f, $grid, $block, $smem, $s, &mut params, false)
    }};
}

fn launch_raw(
    f: CUfunction,
    grid: (u32, u32),
    block: u32,
    smem: usize,
    s: &Stream,
    params: &mut [*mut c_void],
    may_depend: bool,
) -> Result<(), String> {
    if may_depend && DEPENDENT.with(Cell::get) {
        // SAFETY: zeroed is a valid bit pattern for these plain C structs.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let mut cfg: sys::CUlaunchConfig = unsafe { std::mem::zeroed() };
        (cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ) = (grid.0.max(1), grid.1.max(1), 1);
        (cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ) = (block, 1, 1);
        cfg.sharedMemBytes = smem as u32;
        cfg.hStream = s.0;
        cfg.attrs = &mut attr;
        cfg.numAttrs = 1;
        return ck("cuLaunchKernelEx", unsafe {
            sys::cuLaunchKernelEx(&cfg, f, params.as_mut_ptr(), std::ptr::null_mut())
        });
    }
    ck("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            f,
            grid.0.max(1),
            grid.1.max(1),
            1,
            block,
            1,
            1,
            smem as u32,
            s.0,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    })
}

/// Shared memory of one warp's K/V tile in the attention kernels (`tile_halves` in attention.cu).
fn attn_tile_bytes(d: usize) -> usize {
    (32 * (d + 8) + 32 * d) * 2
}

/// (rows per warp, chunks per lane) of the `gemv_*_rR_cC` kernels in gemv.cu.
const GEMV_VARIANTS: [(usize, usize); 8] = [
    (1, 0),
    (4, 0),
    (1, 4),
    (4, 4),
    (1, 8),
    (4, 8),
    (1, 16),
    (1, 24),
];

/// Chunks per lane of the register-fetched variants (K up to 256 times that).
const FETCH_CHUNKS: [usize; 4] = [4, 8, 16, 24];

/// `LAYERSTREAM_CUDA_GEMV_BLOCK` if it is a usable block size, else 256.
fn gemv_threads_from_env() -> u32 {
    const DEFAULT: u32 = 256;
    match std::env::var("LAYERSTREAM_CUDA_GEMV_BLOCK") {
        Err(_) => DEFAULT,
        Ok(v) => match v.parse::<u32>() {
            Ok(t) if (64..=1024).contains(&t) && t % 32 == 0 => t,
            _ => {
                tracing::warn!("LAYERSTREAM_CUDA_GEMV_BLOCK={v} ignored: a multiple of 32 from 64 to 1024 is expected");
                DEFAULT
            }
        },
    }
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).min(u32::MAX as usize) as u32
}

impl Kernels {
    /// Load the image into the current context.
    pub fn load() -> Result<Kernels, String> {
        let m = Module::load(FATBIN)?;
        // Kernels whose dynamic shared memory grows with the model (the GEMV's staged input, the
        // attention tiles) may use all the device allows a block.
        let (mut dev, mut max_smem) = (0, 0);
        ck("cuCtxGetDevice", unsafe { sys::cuCtxGetDevice(&mut dev) })?;
        ck("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(
                &mut max_smem,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                dev,
            )
        })?;
        let big = |name: &str| -> Result<CUfunction, String> {
            let f = m.function(name)?;
            // Static shared memory (reductions, the query rows) comes out of the same budget.
            ck("cuFuncSetAttribute", unsafe {
                sys::cuFuncSetAttribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    max_smem - 8192,
                )
            })?;
            Ok(f)
        };
        let gemv_family = |base: &str| -> Result<Vec<CUfunction>, String> {
            GEMV_VARIANTS
                .iter()
                .map(|(r, c)| big(&format!("{base}_r{r}_c{c}")))
                .collect()
        };
        let fused_family = |base: &str| -> Result<Vec<CUfunction>, String> {
            std::iter::once(0)
                .chain(FETCH_CHUNKS)
                .map(|c| big(&format!("{base}_c{c}")))
                .collect()
        };
        let dequant = [
            (GgmlType::F32, "dequant_f32"),
            (GgmlType::BF16, "dequant_bf16"),
            (GgmlType::Q8_0, "dequant_q8_0"),
            (GgmlType::Q4_0, "dequant_q4_0"),
            (GgmlType::Q4_1, "dequant_q4_1"),
            (GgmlType::Q5_0, "dequant_q5_0"),
            (GgmlType::Q5_1, "dequant_q5_1"),
            (GgmlType::Q4K, "dequant_q4_k"),
            (GgmlType::Q5K, "dequant_q5_k"),
            (GgmlType::Q6K, "dequant_q6_k"),
        ]
        .into_iter()
        .map(|(t, n)| m.function(n).map(|f| (t, f)))
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Kernels {
            embed_gather: m.function("embed_gather")?,
            rmsnorm_f16: m.function("rmsnorm_f16")?,
            rmsnorm_add: m.function("rmsnorm_add")?,
            gated_mul: m.function("gated_mul")?,
            gemv_plain: gemv_family("gemv_plain")?,
            gemv_norm: gemv_family("gemv_norm")?,
            gemv_silu: gemv_family("gemv_silu")?,
            gemv_gelu: gemv_family("gemv_gelu")?,
            gemv_qkv_rope: fused_family("gemv_qkv_rope")?,
            fetch: AtomicBool::new(
                std::env::var("LAYERSTREAM_CUDA_GEMV").map_or(true, |v| v != "streamed"),
            ),
            gemv_threads: gemv_threads_from_env(),
            rope_qkv: m.function("rope_qkv")?,
            attn_rows: big("attn_rows")?,
            attn_rows_split: big("attn_rows_split")?,
            attn_rows_merge: m.function("attn_rows_merge")?,
            attn_decode: big("attn_decode")?,
            attn_reduce: m.function("attn_reduce")?,
            attn_decode_merge: big("attn_decode_merge")?,
            logits_seg: logits_seg(&m)?,
            dequant,
            nonfinite_f16: m.function("nonfinite_f16")?,
            nonfinite_f32: m.function("nonfinite_f32")?,
            gemm_fixed: FixedGemm::load(&m)?,
            _module: m,
        })
    }

    /// Whether `ty` can be turned into F16 on the device.
    pub fn can_dequant(&self, ty: GgmlType) -> bool {
        self.dequant.iter().any(|(t, _)| *t == ty)
    }

    /// Write `tag` to the u32 at `flag` (holding 0xffffffff) if any of the `n` F16 (or F32, with
    /// `wide`) elements at `p` is NaN or infinite (cuda/finite.cu).
    pub fn check_finite(
        &self,
        s: &Stream,
        p: CUdeviceptr,
        n: u64,
        wide: bool,
        flag: CUdeviceptr,
        tag: u32,
    ) -> Result<(), String> {
        let f = if wide {
            self.nonfinite_f32
        } else {
            self.nonfinite_f16
        };
        let grid = blocks(n as usize, 256 * 16).clamp(1, 65_535);
        launch!(f, (grid, 1), 256, 0, s; p, n, flag, tag)
    }

    /// `n` elements of `ty` at `src` → F16 at `dst`.
    pub fn dequant(
        &self,
        s: &Stream,
        ty: GgmlType,
        src: CUdeviceptr,
        dst: CUdeviceptr,
        n: u64,
    ) -> Result<(), String> {
        let f = self
            .dequant
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("no device dequantizer for {}", ty.name()))?;
        let grid = blocks(n as usize, 256 * 32).clamp(1, 65_535);
        launch!(f, (grid, 1), 256, 0, s; src, dst, n)
    }

    /// `n` embedding rows, each multiplied by `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_gather(
        &self,
        s: &Stream,
        table: CUdeviceptr,
        ids: CUdeviceptr,
        x: CUdeviceptr,
        n: usize,
        hidden: usize,
        scale: f32,
    ) -> Result<(), String> {
        launch!(dep self.embed_gather, (n as u32, 1), 256, 0, s; table, ids, x, hidden as i32, scale)
    }

    /// x[r] += rmsnorm(y[r]) ⊙ w for `rows` rows of `cols` (the post-norm residual).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_add(
        &self,
        s: &Stream,
        y: CUdeviceptr,
        w: CUdeviceptr,
        x: CUdeviceptr,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), String> {
        launch!(dep self.rmsnorm_add, (rows as u32, 1), 256, 0, s; y, w, x, cols as i32, eps)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_f16(
        &self,
        s: &Stream,
        x: CUdeviceptr,
        w: CUdeviceptr,
        y: CUdeviceptr,
        pick: CUdeviceptr,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), String> {
        launch!(dep self.rmsnorm_f16, (rows as u32, 1), 256, 0, s; x, w, y, pick, cols as i32, eps)
    }

    /// Y[m, n] (+ Y when `acc`) = X[m, k] · W[n, k]ᵀ with sums in an order fixed by `k` alone
    /// (`cuda/gemm_fixed.cu`); the caller checks [`FixedGemm::fits`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_fixed(
        &self,
        s: &Stream,
        x: CUdeviceptr,
        w: CUdeviceptr,
        y: CUdeviceptr,
        m: usize,
        n: usize,
        k: usize,
        acc: bool,
    ) -> Result<(), String> {
        self.gemm_fixed_as(FixedGemm::kind(m, n), s, x, w, y, (m, n, k), acc)
    }

    /// `gemm_fixed` by the kernel family `kind`, whatever its shape would pick (the checks
    /// compare the two; the sums are the same either way).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_fixed_as(
        &self,
        kind: Kind,
        s: &Stream,
        x: CUdeviceptr,
        w: CUdeviceptr,
        y: CUdeviceptr,
        (m, n, k): (usize, usize, usize),
        acc: bool,
    ) -> Result<(), String> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        debug_assert!(FixedGemm::fits(x, w, k));
        let l = self.gemm_fixed.plan(m, n, k, kind)?;
        launch!(dep l.f, l.grid, l.block, 0, s; x, w, y, m as i32, n as i32, k as i32, acc as i32)
    }

    /// act = f16(a(gate) ⊙ up) for `n` rows of `[gate | up]`: a = silu, or GELU-tanh with `gelu`.
    pub fn gated_mul(
        &self,
        s: &Stream,
        gu: CUdeviceptr,
        act: CUdeviceptr,
        n: usize,
        ffn: usize,
        gelu: bool,
    ) -> Result<(), String> {
        let grid = blocks(n * ffn, 256).min(65_535);
        launch!(dep self.gated_mul, (grid, 1), 256, 0, s; gu, act, n as i32, ffn as i32, gelu as i32)
    }

    /// Fetch decode weights into registers first (where K allows), or stream them (the earlier
    /// kernels, kept for comparison and for K beyond the register budget).
    pub fn set_fetch(&self, on: bool) {
        self.fetch.store(on, Ordering::Relaxed);
    }

    /// Chunks per lane of the register-fetched variant for K columns, 0 for streamed.
    fn fetch_chunks(&self, k: usize) -> usize {
        if !self.fetch.load(Ordering::Relaxed) {
            return 0;
        }
        let need = (k / 8).div_ceil(32);
        FETCH_CHUNKS.into_iter().find(|&c| c >= need).unwrap_or(0)
    }

    /// Index into the fused families for K columns.
    fn fused_variant(&self, k: usize) -> usize {
        let c = self.fetch_chunks(k);
        FETCH_CHUNKS
            .iter()
            .position(|&f| f == c)
            .map_or(0, |i| i + 1)
    }

    /// (variant, grid, dynamic shared bytes): wide outputs (the LM head, gate/up) give each warp
    /// four rows, so fewer blocks stage x and more loads are in flight per warp; rows fetched into
    /// registers where K allows (one row per warp beyond 2048 columns).
    fn gemv_shape(&self, n: usize, k: usize) -> (usize, u32, usize) {
        let c = self.fetch_chunks(k);
        let rows = if n >= 8192 && c <= 8 { 4 } else { 1 };
        let variant = GEMV_VARIANTS
            .iter()
            .position(|&v| v == (rows, c))
            .unwrap_or(0);
        let warps = self.gemv_threads as usize / 32;
        (variant, blocks(n, warps * rows), k * 4)
    }

    /// y[N] (+)= W[N,K] · x (+ bias).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_plain(
        &self,
        s: &Stream,
        w: CUdeviceptr,
        x: CUdeviceptr,
        bias: CUdeviceptr,
        y: CUdeviceptr,
        n: usize,
        k: usize,
        acc: bool,
    ) -> Result<(), String> {
        let (v, grid, smem) = self.gemv_shape(n, k);
        launch!(dep self.gemv_plain[v], (grid, 1), self.gemv_threads, smem, s; w, x, bias, y, n as i32, k as i32, acc as i32)
    }

    /// y[N] (+)= W[N,K] · rmsnorm(x) ⊙ norm_w (+ bias).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_norm(
        &self,
        s: &Stream,
        w: CUdeviceptr,
        x: CUdeviceptr,
        norm_w: CUdeviceptr,
        eps: f32,
        bias: CUdeviceptr,
        y: CUdeviceptr,
        n: usize,
        k: usize,
        acc: bool,
    ) -> Result<(), String> {
        let (v, grid, smem) = self.gemv_shape(n, k);
        launch!(dep self.gemv_norm[v], (grid, 1), self.gemv_threads, smem, s; w, x, norm_w, eps, bias, y, n as i32, k as i32, acc as i32)
    }

    /// y[N] (+)= W[N,K] · (silu(gu[..K]) ⊙ gu[K..]) (+ bias); GELU-tanh instead of silu with `gelu`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_silu(
        &self,
        s: &Stream,
        w: CUdeviceptr,
        gu: CUdeviceptr,
        bias: CUdeviceptr,
        y: CUdeviceptr,
        n: usize,
        k: usize,
        acc: bool,
        gelu: bool,
    ) -> Result<(), String> {
        let (v, grid, smem) = self.gemv_shape(n, k);
        let f = if gelu {
            self.gemv_gelu[v]
        } else {
            self.gemv_silu[v]
        };
        launch!(dep f, (grid, 1), self.gemv_threads, smem, s; w, gu, bias, y, n as i32, k as i32, acc as i32)
    }

    /// Bias, q/k norms, RoPE and the KV append (as `post` says) for `n` rows placed as `at` says.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_qkv(
        &self,
        s: &Stream,
        qkv: CUdeviceptr,
        post: &QkvPost,
        q: CUdeviceptr,
        k_cache: CUdeviceptr,
        v_cache: CUdeviceptr,
        at: &RowsAt,
        n: usize,
        hp: &crate::model::HParams,
    ) -> Result<(), String> {
        launch!(dep self.rope_qkv, (n as u32, 1), 512, 0, s;
            qkv, post.bias, post.q_norm, post.k_norm, hp.rms_eps, q, k_cache, v_cache, at.pos_dev, at.row_pos,
            at.slots, at.pos0 as i32, hp.n_head as i32, hp.n_kv_head as i32, hp.head_dim as i32, post.inv_freq,
            post.interleaved as i32, post.mscale)
    }

    /// Causal attention of `n` query rows, each over its own sequence's keys (`at`), F16 out.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_rows(
        &self,
        s: &Stream,
        q: CUdeviceptr,
        kc: CUdeviceptr,
        vc: CUdeviceptr,
        out: CUdeviceptr,
        n: usize,
        at: &RowsAt,
        hp: &crate::model::HParams,
        window: usize,
    ) -> Result<(), String> {
        let scale = hp.attn_scale();
        launch!(dep self.attn_rows, (blocks(n, 4), hp.n_head as u32), 128, 4 * attn_tile_bytes(hp.head_dim), s;
            q, kc, vc, out, n as i32, at.row_pos, at.pos0 as i32, at.row_tab, at.tables, at.bs as i32,
            hp.n_head as i32, hp.n_kv_head as i32, hp.head_dim as i32, scale, window as i32)
    }

    /// As [`Kernels::attn_rows`], each row's keys split into `split.splits` ranges of
    /// `split.chunk` (partials in `split`'s buffers), then merged into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_rows_split(
        &self,
        s: &Stream,
        q: CUdeviceptr,
        kc: CUdeviceptr,
        vc: CUdeviceptr,
        out: CUdeviceptr,
        n: usize,
        at: &RowsAt,
        split: &RowsSplit,
        hp: &crate::model::HParams,
        window: usize,
    ) -> Result<(), String> {
        let scale = hp.attn_scale();
        let (chunk, splits) = (split.chunk as i32, split.splits as i32);
        let grid = (n as u32, (hp.n_head * split.splits) as u32);
        launch!(dep self.attn_rows_split, grid, 32, attn_tile_bytes(hp.head_dim), s;
            q, kc, vc, split.acc, split.ml, n as i32, at.row_pos, at.pos0 as i32, at.row_tab, at.tables,
            at.bs as i32, hp.n_head as i32, hp.n_kv_head as i32, hp.head_dim as i32, scale, chunk, splits,
            window as i32)?;
        launch!(dep self.attn_rows_merge, (n as u32, hp.n_head as u32), 32, 0, s;
            split.acc, split.ml, out, n as i32, at.row_pos, at.pos0 as i32, hp.n_head as i32,
            hp.head_dim as i32, chunk, splits)
    }

    /// Split decode attention then the merge of the splits into `out` (F32 `[q_dim]`).
    #[allow(clippy::too_many_arguments)]
    pub fn attn_decode(
        &self,
        s: &Stream,
        q: CUdeviceptr,
        kc: CUdeviceptr,
        vc: CUdeviceptr,
        pg: Paged,
        part_acc: CUdeviceptr,
        part_ml: CUdeviceptr,
        out: CUdeviceptr,
        pos_dev: CUdeviceptr,
        split_keys: usize,
        max_splits: usize,
        hp: &crate::model::HParams,
        window: usize,
    ) -> Result<(), String> {
        self.attn_decode_splits(
            s, q, kc, vc, pg, part_acc, part_ml, pos_dev, split_keys, max_splits, hp, window,
        )?;
        launch!(dep self.attn_reduce, (hp.n_head as u32, 1), 32, 0, s;
            part_acc, part_ml, out, pos_dev, hp.head_dim as i32, split_keys as i32, max_splits as i32)
    }

    /// Split decode attention only: each split's unnormalised partials (merged by `attn_reduce`).
    #[allow(clippy::too_many_arguments)]
    pub fn attn_decode_splits(
        &self,
        s: &Stream,
        q: CUdeviceptr,
        kc: CUdeviceptr,
        vc: CUdeviceptr,
        pg: Paged,
        part_acc: CUdeviceptr,
        part_ml: CUdeviceptr,
        pos_dev: CUdeviceptr,
        split_keys: usize,
        max_splits: usize,
        hp: &crate::model::HParams,
        window: usize,
    ) -> Result<(), String> {
        let scale = hp.attn_scale();
        launch!(dep self.attn_decode, (max_splits as u32, hp.n_head as u32), 32, attn_tile_bytes(hp.head_dim), s;
            q, kc, vc, pg.table, pg.bs as i32, part_acc, part_ml, pos_dev, hp.n_head as i32, hp.n_kv_head as i32, hp.head_dim as i32, scale, split_keys as i32,
            window as i32)
    }

    /// Decode QKV product with RMSNorm, biases, RoPE and the KV append fused (`decode_fused.cu`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_qkv_rope(
        &self,
        s: &Stream,
        w: CUdeviceptr,
        x: CUdeviceptr,
        norm_w: CUdeviceptr,
        post: &QkvPost,
        q: CUdeviceptr,
        k_cache: CUdeviceptr,
        v_cache: CUdeviceptr,
        pos_dev: CUdeviceptr,
        slot_dev: CUdeviceptr,
        hp: &crate::model::HParams,
    ) -> Result<(), String> {
        debug_assert!(post.q_norm == 0, "the fused kernel has no q/k norms");
        let tasks = (hp.n_head + hp.n_kv_head) * hp.head_dim / 2 + hp.kv_dim();
        let f = self.gemv_qkv_rope[self.fused_variant(hp.hidden)];
        launch!(dep f, (blocks(tasks, 8), 1), 256, hp.hidden * 4, s;
            w, x, norm_w, hp.rms_eps, post.bias, q, k_cache, v_cache, pos_dev, slot_dev, hp.n_head as i32, hp.n_kv_head as i32,
            hp.head_dim as i32, post.inv_freq, post.interleaved as i32, post.mscale, hp.hidden as i32)
    }

    /// Split decode attention with the merge done by each head's last block (`attn_decode_merge`):
    /// F32 `[q_dim]` to `out` in one launch. `count`: `n_head` ints, zero before the first launch
    /// (the kernel leaves them zero).
    #[allow(clippy::too_many_arguments)]
    pub fn attn_decode_merged(
        &self,
        s: &Stream,
        q: CUdeviceptr,
        kc: CUdeviceptr,
        vc: CUdeviceptr,
        pg: Paged,
        part_acc: CUdeviceptr,
        part_ml: CUdeviceptr,
        out: CUdeviceptr,
        count: CUdeviceptr,
        pos_dev: CUdeviceptr,
        split_keys: usize,
        max_splits: usize,
        hp: &crate::model::HParams,
        window: usize,
    ) -> Result<(), String> {
        let scale = hp.attn_scale();
        launch!(dep self.attn_decode_merge, (max_splits as u32, hp.n_head as u32), 32, attn_tile_bytes(hp.head_dim), s;
            q, kc, vc, pg.table, pg.bs as i32, part_acc, part_ml, out, count, pos_dev, hp.n_head as i32, hp.n_kv_head as i32, hp.head_dim as i32,
            scale, split_keys as i32, window as i32)
    }

    /// Per-row results of `rows` logit rows (`sample.cu`): `mode`, `inv_t`, `u` one per row (i32,
    /// f32, f32); `out`: [`HEAD_ROW_WORDS`] u32 per row; `scratch`: [`LOGITS_SCRATCH_WORDS`] u32
    /// per row, zero before its first use (the kernels leave it so).
    #[allow(clippy::too_many_arguments)]
    pub fn logits_rows(
        &self,
        s: &Stream,
        logits: CUdeviceptr,
        rows: usize,
        vocab: usize,
        n_text: usize,
        (mode, inv_t, u): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
        scratch: CUdeviceptr,
        out: CUdeviceptr,
    ) -> Result<(), String> {
        let grid = (rows as u32, LOGITS_SEGS);
        let [stats, mass, head] = self.logits_seg;
        let (v, n) = (vocab as i32, n_text as i32);
        launch!(dep stats, grid, 256, 0, s; logits, v, n, mode, scratch, out)?;
        launch!(dep mass, grid, 256, 0, s; logits, v, n, mode, inv_t, u, scratch, out)?;
        launch!(dep head, grid, 256, 0, s; logits, v, n, mode, scratch, out)
    }
}

/// `logits_rows`'s (mode, 1/temperature, uniform) for a row that wants `w`: 0 argmax only (also
/// for a row read whole), 1 a draw, 2 the head.
pub fn row_mode(w: crate::sampler::RowWant) -> (u32, f32, f32) {
    use crate::sampler::RowWant;
    match w {
        RowWant::Full | RowWant::Argmax => (0, 0.0, 0.0),
        RowWant::Draw { inv_t, u } => (1, inv_t, u),
        RowWant::Head { inv_t } => (2, inv_t, 0.0),
    }
}

/// Candidates `logits_rows` returns per row in head mode (`HEAD_K` in sample.cu).
pub const HEAD_K: usize = 256;
/// `sample.cu`'s three kernels, in launch order.
fn logits_seg(m: &Module) -> Result<[CUfunction; 3], String> {
    Ok([
        m.function("logits_seg_stats")?,
        m.function("logits_seg_mass")?,
        m.function("logits_seg_head")?,
    ])
}

/// Segments (blocks) `logits_rows` cuts a row into (`SEGS` in sample.cu).
const LOGITS_SEGS: u32 = 64;
/// u32 words of `logits_rows`'s scratch per row (`SCR_WORDS` in sample.cu).
pub const LOGITS_SCRATCH_WORDS: usize = LOGITS_SEGS as usize * 8 + 8 + 2048 + 2 * 512;
/// u32 words per row of `logits_rows`'s output.
pub const HEAD_ROW_WORDS: usize = 8 + 2 * HEAD_K;

// The host's sampler reads exactly the head the device returns.
const _: () = assert!(HEAD_K == crate::sampler::DEVICE_HEAD);
