//! The architecture table: for each supported `general.architecture`, what its files hold and how
//! its layers compute. Everything family-specific is a row here; the loader, the validation and
//! the decoders read the row instead of testing the family's name.

use super::ModelError;

/// Whether a family's layers carry a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
    Absent,
}

/// How a family's GGUF files pair the dimensions RoPE rotates within a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Element `i` with `i + head_dim/2` (GPT-NeoX; Qwen2's files, and what the backends compute).
    Neox,
    /// Element `2i` with `2i + 1` (llama.cpp's "normal" RoPE: the converter permuted Llama's Q
    /// and K rows into this order). The loader permutes each head's Q and K rows back to NeoX
    /// order; attention scores are unchanged (q·k is the same under one permutation of both).
    Interleaved,
}

/// The gated activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (SwiGLU).
    SiluGated,
    /// `gelu_tanh(gate) * up` (GeGLU with the tanh approximation: Gemma).
    GeluTanhGated,
}

/// Layers that attend to a window of recent positions instead of all of them, where the file
/// sets `attention.sliding_window`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlidingLayers {
    /// Every `n`-th layer (the last of each period: `l % n == n - 1`) is global; `None`: every
    /// layer is windowed (Mistral 7B v0.1).
    pub global_every: Option<usize>,
    /// The RoPE base of the windowed (local) layers (unscaled); `None`: the global one.
    pub local_rope_base: Option<f32>,
}

/// One row of the table.
#[derive(Debug, PartialEq)]
pub struct ArchInfo {
    /// `general.architecture`, also the prefix of its metadata keys.
    pub name: &'static str,
    /// Biases of the Q, K and V projections.
    pub qkv_bias: Presence,
    /// RMSNorm of each query and key head before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    pub rope: RopeStyle,
    pub activation: Activation,
    /// RMSNorm of the attention output and of the MLP output before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Embeddings scaled by sqrt(hidden) (Gemma).
    pub embed_scale: bool,
    /// The local/global layer pattern where `attention.sliding_window` is set.
    pub sliding: Option<SlidingLayers>,
}

/// A supported family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Qwen2 and Qwen2.5.
    Qwen2,
    /// Llama 2/3 and the files that share its layout (Mistral 7B, SmolLM2, TinyLlama).
    Llama,
    /// Qwen3 (dense): per-head q/k norms, no biases.
    Qwen3,
    /// Gemma 3 (text): sliding-window and global layers, four norms a layer, GeGLU.
    Gemma3,
}

const QWEN2: ArchInfo = ArchInfo {
    name: "qwen2",
    qkv_bias: Presence::Required,
    qk_norm: false,
    rope: RopeStyle::Neox,
    activation: Activation::SiluGated,
    post_norms: false,
    embed_scale: false,
    sliding: None,
};

const QWEN3: ArchInfo = ArchInfo {
    name: "qwen3",
    qkv_bias: Presence::Absent,
    qk_norm: true,
    rope: RopeStyle::Neox,
    activation: Activation::SiluGated,
    post_norms: false,
    embed_scale: false,
    sliding: None,
};

/// Gemma 3 (text). Its files store every RMSNorm weight as `1 + w` (llama.cpp's converter folds
/// Gemma's `x * (1 + w)` in), so the norms are the ordinary ones.
const GEMMA3: ArchInfo = ArchInfo {
    name: "gemma3",
    qkv_bias: Presence::Absent,
    qk_norm: true,
    rope: RopeStyle::Neox,
    activation: Activation::GeluTanhGated,
    post_norms: true,
    embed_scale: true,
    sliding: Some(SlidingLayers {
        global_every: Some(6),
        local_rope_base: Some(10_000.0),
    }),
};

/// Llama; Mistral 7B's files may set a window for every layer.
const LLAMA: ArchInfo = ArchInfo {
    name: "llama",
    qkv_bias: Presence::Optional,
    qk_norm: false,
    rope: RopeStyle::Interleaved,
    activation: Activation::SiluGated,
    post_norms: false,
    embed_scale: false,
    sliding: Some(SlidingLayers {
        global_every: None,
        local_rope_base: None,
    }),
};

impl Family {
    pub const ALL: [Family; 4] = [Family::Qwen2, Family::Llama, Family::Qwen3, Family::Gemma3];

    pub fn info(self) -> &'static ArchInfo {
        match self {
            Family::Qwen2 => &QWEN2,
            Family::Llama => &LLAMA,
            Family::Qwen3 => &QWEN3,
            Family::Gemma3 => &GEMMA3,
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The family of `general.architecture`; an unknown one is refused listing the supported.
    pub fn from_name(arch: &str) -> Result<Family, ModelError> {
        if let Some(f) = Family::ALL.into_iter().find(|f| f.name() == arch) {
            return Ok(f);
        }
        let known: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        let why = match arch {
            "qwen2moe" | "qwen3moe" | "mixtral" | "deepseek2" | "llama4" | "gpt-oss" => {
                "mixture-of-experts models are not supported"
            }
            _ => "this architecture is not supported",
        };
        Err(ModelError::Architecture {
            arch: arch.to_string(),
            why,
            supported: known.join(", "),
        })
    }

    /// The metadata key `<arch>.<key>`.
    pub fn key(self, key: &str) -> String {
        format!("{}.{key}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_found_by_name_and_others_refused_listing_them() {
        assert_eq!(Family::from_name("qwen2").unwrap(), Family::Qwen2);
        assert_eq!(Family::from_name("llama").unwrap(), Family::Llama);
        assert_eq!(Family::Llama.key("block_count"), "llama.block_count");
        let e = Family::from_name("mamba").unwrap_err().to_string();
        assert!(
            e.contains("'mamba'") && e.contains("qwen2, llama, qwen3, gemma3"),
            "{e}"
        );
        assert_eq!(Family::from_name("qwen3").unwrap(), Family::Qwen3);
        let e = Family::from_name("mixtral").unwrap_err().to_string();
        assert!(e.contains("mixture-of-experts"), "{e}");
    }
}
