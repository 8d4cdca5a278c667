//! The batch-invariant tensor-core product (`cuda/gemm_fixed.cu`): Y[m, n] (+)= X[m, k] · W[n, k]ᵀ
//! with F16 inputs and F32 sums in an order fixed by `k` alone, so a row's values never depend on
//! how many rows the product holds. The kernel (operands straight into registers, or tiled through
//! shared memory) and its tile shape are chosen here from `m` and `n` for speed only.

use cudarc::driver::sys::{CUdeviceptr, CUfunction};

use super::driver::Module;

/// Tile sizes the kernel file instantiates: m16 tiles a block, n8 tiles a warp.
const SIZES: [usize; 3] = [1, 2, 4];

/// Blocks a product should have to fill the card (about two per SM of an H100/H200).
const ENOUGH_BLOCKS: usize = 264;

/// Most n8 tiles a warp when K is split in 8 (the kernel file instantiates no more).
const SPLIT8_MAX_NT: usize = 2;

/// Rows and columns of Y a block of the tiled kernels takes (`TILE_M`, `TILE_N`), and its threads.
const TILE: usize = 64;
const TILE_THREADS: u32 = 128;

/// Fewest rows, and fewest blocks (one per SM of an H200), for which the tiled kernels beat the
/// direct ones.
const TILED_MIN_ROWS: usize = 32;
const TILED_MIN_BLOCKS: usize = 132;

/// The two kernel families of `cuda/gemm_fixed.cu`: the same sums, bit for bit, either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `gemm_fixed_k*_m*_n*`: each warp loads its rows of X and W straight into registers and
    /// sums one range of K (fastest for few rows).
    Direct,
    /// `gemm_fixed_tiled_k*`: 64 × 64 tiles of Y, X and W staged through shared memory (fastest
    /// for many rows and wide products).
    Tiled,
}

pub struct FixedGemm {
    /// `fns[s][a][b]`: K split in 4 (s = 0) or 8 (s = 1), MT = SIZES[a], NT = SIZES[b]; None
    /// where the file has no such kernel.
    fns: [[[Option<CUfunction>; 3]; 3]; 2],
    /// `tiled[s]`: the tiled kernel for K split in 4 (s = 0) or 8 (s = 1).
    tiled: [CUfunction; 2],
}

unsafe impl Send for FixedGemm {}
unsafe impl Sync for FixedGemm {}

impl FixedGemm {
    pub fn load(m: &Module) -> Result<FixedGemm, String> {
        let mut fns = [[[None; 3]; 3]; 2];
        for (si, ks) in [4usize, 8].into_iter().enumerate() {
            for (a, mt) in SIZES.into_iter().enumerate() {
                for (b, nt) in SIZES.into_iter().enumerate() {
                    if ks == 8 && nt > SPLIT8_MAX_NT {
                        continue;
                    }
                    fns[si][a][b] = Some(m.function(&format!("gemm_fixed_k{ks}_m{mt}_n{nt}"))?);
                }
            }
        }
        let tiled = [
            m.function("gemm_fixed_tiled_k4")?,
            m.function("gemm_fixed_tiled_k8")?,
        ];
        Ok(FixedGemm { fns, tiled })
    }

    /// The faster kernel for an m × n product: the tiled one once there are rows enough to share
    /// X's loads and blocks enough to fill the card.
    pub fn kind(m: usize, n: usize) -> Kind {
        if m >= TILED_MIN_ROWS && m.div_ceil(TILE) * n.div_ceil(TILE) >= TILED_MIN_BLOCKS {
            Kind::Tiled
        } else {
            Kind::Direct
        }
    }

    /// How many ranges K is split into (each summed by one warp, then added in order): a
    /// function of K alone, so every row of any product over this K sums the same way.
    fn k_split(k: usize) -> usize {
        if k <= 1024 {
            4
        } else {
            8
        }
    }

    /// Whether the kernel takes these operands: K a multiple of 32, X and W 16-byte aligned.
    pub fn fits(x: CUdeviceptr, w: CUdeviceptr, k: usize) -> bool {
        k.is_multiple_of(32) && x.is_multiple_of(16) && w.is_multiple_of(16)
    }

    /// (MT index, NT index) for an m × n product: the fewest m16 tiles a block that cover `m`
    /// (at most 4), then the most n8 tiles a warp (at most `max_nt`) that still leave enough
    /// blocks.
    fn tiles(m: usize, n: usize, max_nt: usize) -> (usize, usize) {
        let a = SIZES.iter().position(|&mt| 16 * mt >= m).unwrap_or(2);
        let row_blocks = m.div_ceil(16 * SIZES[a]);
        let b = (0..3)
            .rev()
            .filter(|&b| SIZES[b] <= max_nt)
            .find(|&b| n.div_ceil(8 * SIZES[b]) * row_blocks >= ENOUGH_BLOCKS)
            .unwrap_or(0);
        (a, b)
    }

    /// The kernel of family `kind` ([`FixedGemm::kind`] picks the faster), its grid and block,
    /// for an m × n product over `k` columns (m, n > 0); the caller checks [`FixedGemm::fits`].
    pub fn plan(&self, m: usize, n: usize, k: usize, kind: Kind) -> Result<Launch, String> {
        let ks = Self::k_split(k);
        let si = usize::from(ks == 8);
        let (f, (m_blocks, n_blocks), block) = match kind {
            Kind::Direct => {
                let max_nt = if ks == 4 { 4 } else { SPLIT8_MAX_NT };
                let (a, b) = Self::tiles(m, n, max_nt);
                let f = self.fns[si][a][b].ok_or("gemm_fixed: no kernel for this tile")?;
                let blocks = (m.div_ceil(16 * SIZES[a]), n.div_ceil(8 * SIZES[b]));
                (f, blocks, 32 * ks as u32)
            }
            Kind::Tiled => {
                let blocks = (m.div_ceil(TILE), n.div_ceil(TILE));
                (self.tiled[si], blocks, TILE_THREADS)
            }
        };
        if n_blocks > 65_535 {
            return Err(format!(
                "gemm_fixed: {n} columns need more than 65,535 blocks"
            ));
        }
        Ok(Launch {
            f,
            // The m blocks of one n block first (adjacent in launch order, sharing W's tile).
            grid: (m_blocks as u32, n_blocks as u32),
            block,
        })
    }
}

/// One launch of the kernel: which instantiation, grid (m blocks, n blocks), threads a block.
pub struct Launch {
    pub f: CUfunction,
    pub grid: (u32, u32),
    pub block: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_rows_and_fill_the_card() {
        // One row: one m16 tile; a narrow product keeps one n8 tile a warp to have blocks enough.
        assert_eq!(FixedGemm::tiles(1, 896, 4), (0, 0));
        // A wide product can take four n8 tiles a warp and still fill the card.
        assert_eq!(FixedGemm::tiles(1, 151_936, 4), (0, 2));
        assert_eq!(FixedGemm::tiles(1, 151_936, 2), (0, 1));
        assert_eq!(FixedGemm::tiles(17, 896, 4), (1, 0));
        assert_eq!(FixedGemm::tiles(128, 9728, 4), (2, 2));
        assert_eq!((FixedGemm::k_split(896), FixedGemm::k_split(4864)), (4, 8));
        assert!(FixedGemm::fits(0, 16, 896));
        assert!(!FixedGemm::fits(0, 16, 900));
        assert!(!FixedGemm::fits(8, 16, 896));
    }

    #[test]
    fn tiled_kernel_takes_many_rows_over_many_blocks() {
        // Few rows stay on the direct kernels, however wide the product.
        assert_eq!(FixedGemm::kind(1, 151_936), Kind::Direct);
        assert_eq!(FixedGemm::kind(16, 151_936), Kind::Direct);
        assert_eq!(FixedGemm::kind(31, 151_936), Kind::Direct);
        // Rows enough and blocks enough: 1 × 152, 2 × 152, 1 × 2374.
        assert_eq!(FixedGemm::kind(32, 9728), Kind::Tiled);
        assert_eq!(FixedGemm::kind(64, 9728), Kind::Tiled);
        assert_eq!(FixedGemm::kind(128, 9728), Kind::Tiled);
        assert_eq!(FixedGemm::kind(64, 151_936), Kind::Tiled);
        // Too few blocks to fill the card: 2 × 14, 8 × 14 and 2 × 18.
        assert_eq!(FixedGemm::kind(128, 896), Kind::Direct);
        assert_eq!(FixedGemm::kind(512, 896), Kind::Direct);
        assert_eq!(FixedGemm::kind(128, 1152), Kind::Direct);
        // The threshold itself: 132 blocks exactly, and one short.
        assert_eq!(FixedGemm::kind(64 * 12, 64 * 11), Kind::Tiled);
        assert_eq!(FixedGemm::kind(64 * 12, 64 * 11 - 64), Kind::Direct);
        assert_eq!(FixedGemm::kind(64 * 11 + 1, 64 * 11), Kind::Tiled);
    }
}
