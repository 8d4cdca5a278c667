//! ggml tensor element types: their GGUF ids, names and block geometry (elements and bytes per
//! block), which is all the reader and writer need to size tensor data.

/// A ggml tensor type this project can read. Other ids are refused at parse time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
}

impl GgmlType {
    /// Every supported type, in id order.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::BF16,
    ];

    /// (GGUF id, name, elements per block, bytes per block), from ggml's type traits.
    fn row(self) -> (u32, &'static str, u64, u64) {
        match self {
            GgmlType::F32 => (0, "F32", 1, 4),
            GgmlType::F16 => (1, "F16", 1, 2),
            GgmlType::Q4_0 => (2, "Q4_0", 32, 18),
            GgmlType::Q4_1 => (3, "Q4_1", 32, 20),
            GgmlType::Q5_0 => (6, "Q5_0", 32, 22),
            GgmlType::Q5_1 => (7, "Q5_1", 32, 24),
            GgmlType::Q8_0 => (8, "Q8_0", 32, 34),
            GgmlType::Q8_1 => (9, "Q8_1", 32, 36),
            GgmlType::Q2K => (10, "Q2_K", 256, 84),
            GgmlType::Q3K => (11, "Q3_K", 256, 110),
            GgmlType::Q4K => (12, "Q4_K", 256, 144),
            GgmlType::Q5K => (13, "Q5_K", 256, 176),
            GgmlType::Q6K => (14, "Q6_K", 256, 210),
            GgmlType::Q8K => (15, "Q8_K", 256, 292),
            GgmlType::BF16 => (30, "BF16", 1, 2),
        }
    }

    /// The type with GGUF id `id`, or None for ids this project does not support.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.into_iter().find(|ty| ty.id() == id)
    }

    /// The GGUF / ggml id.
    pub fn id(self) -> u32 {
        self.row().0
    }

    /// ggml's name: "F32", "F16", "Q4_K", ...
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Elements per block: 1 for float types, 32 or 256 for quantized ones.
    pub fn block_elems(self) -> u64 {
        self.row().2
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.row().3
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// Bytes for `n_elems` elements; None if n_elems is not a multiple of block_elems or on overflow.
    pub fn bytes_for(self, n_elems: u64) -> Option<u64> {
        if !n_elems.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n_elems / self.block_elems()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_names_match_ggml() {
        for ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        }
        assert_eq!(GgmlType::Q4K.name(), "Q4_K");
        assert_eq!(GgmlType::BF16.id(), 30);
        assert_eq!(
            (GgmlType::Q6K.block_elems(), GgmlType::Q6K.block_bytes()),
            (256, 210)
        );
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(99), None);
    }

    #[test]
    fn bytes_for_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
        assert_eq!(GgmlType::BF16.bytes_for(3), Some(6));
        assert!(GgmlType::Q8_0.is_quantized() && !GgmlType::BF16.is_quantized());
    }
}
