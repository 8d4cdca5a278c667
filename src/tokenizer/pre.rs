//! The pre-tokenizers of byte-level BPE vocabularies, by `tokenizer.ggml.pre` name (the names
//! llama.cpp's converter writes): whether text is NFC-normalised first, and the split regexes
//! applied in order (each piece `Isolated`) before the byte-level mapping. Each row reproduces the
//! family's `tokenizer.json` (checked against transformers by the tokenizer golden tests).

/// One pre-tokenizer.
#[derive(Debug, PartialEq, Eq)]
pub struct PreTokenizer {
    /// `tokenizer.ggml.pre` values that select it.
    pub names: &'static [&'static str],
    /// NFC normalisation before splitting (Qwen2's `tokenizer.json` has it; others have none).
    pub nfc: bool,
    /// Split regexes, applied one after the other.
    pub splits: &'static [&'static str],
    /// A piece that is a whole token of the vocabulary is that token, merges or not (the BPE
    /// model's `ignore_merges`: Llama 3's `tokenizer.json`, and llama.cpp for `llama-bpe`).
    pub ignore_merges: bool,
}

/// Qwen2's split regex (from its `tokenizer.json`).
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex (from its `tokenizer.json`): Qwen2's with digits in runs of up to three.
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's split regex (the `ByteLevel` pre-tokenizer's own, `use_regex: true`).
const GPT2_SPLIT_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const TABLE: [PreTokenizer; 4] = [
    PreTokenizer {
        names: &["qwen2", "deepseek-r1-qwen", "megrez"],
        nfc: true,
        splits: &[QWEN2_SPLIT_REGEX],
        ignore_merges: false,
    },
    // SmolLM's `tokenizer.json`: Digits(individual_digits) then ByteLevel(use_regex).
    PreTokenizer {
        names: &["smollm"],
        nfc: false,
        splits: &[r"\p{N}", GPT2_SPLIT_REGEX],
        ignore_merges: false,
    },
    // Llama 3.x (and files converted with its pre-tokenizer).
    PreTokenizer {
        names: &["llama-bpe", "llama3", "llama-v3"],
        nfc: false,
        splits: &[LLAMA3_SPLIT_REGEX],
        ignore_merges: true,
    },
    // GPT-2's own: ByteLevel(use_regex).
    PreTokenizer {
        names: &["gpt-2", "gpt2"],
        nfc: false,
        splits: &[GPT2_SPLIT_REGEX],
        ignore_merges: false,
    },
];

/// The pre-tokenizer `name` selects.
pub fn lookup(name: &str) -> Option<&'static PreTokenizer> {
    TABLE.iter().find(|p| p.names.contains(&name))
}

/// Every supported name, for error messages.
pub fn supported() -> String {
    let names: Vec<&str> = TABLE.iter().flat_map(|p| p.names.iter().copied()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_select_their_rows() {
        assert!(lookup("qwen2").unwrap().nfc);
        assert_eq!(lookup("smollm").unwrap().splits.len(), 2);
        assert!(lookup("llama-bpe").unwrap().ignore_merges);
        assert!(lookup("falcon").is_none());
        assert!(supported().contains("megrez") && supported().contains("smollm"));
    }
}
