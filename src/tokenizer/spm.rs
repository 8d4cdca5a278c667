//! SentencePiece-style BPE vocabularies (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2,
//! Mistral), as Hugging Face's `GemmaTokenizer` reads them from a GGUF file: spaces become `▁`,
//! no pre-tokenizer splits the text, characters outside the vocabulary fall back to `<0xXX>`
//! byte tokens, and the merges — which the file does not list — are recovered from the
//! vocabulary: every token that two other tokens concatenate to is a merge, ranked by the token's
//! score (`tokenizer.ggml.scores`: Llama 2, Mistral, TinyLlama) or, for Gemma, whose scores do not
//! follow its merge order, by its position in the file (the order its vocabulary was built in), as
//! transformers' GGUF tokenizer builders do.

use std::collections::HashMap;

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;

use super::TokenizerError;

/// GGUF `token_type` of a byte-fallback token (`<0x0A>`).
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// A token as `GemmaTokenizer` spells it: the file stores a run of spaces (`"  "`, a
/// user-defined token) with real spaces, the model with `▁`.
fn respelled(token: &str) -> String {
    if token.contains(' ') && token.trim().is_empty() {
        "\u{2581}".repeat(token.chars().count())
    } else {
        token.to_owned()
    }
}

/// The merges a vocabulary implies: for each token (first occurrence order), every split into two
/// tokens of the vocabulary (by their ids), then all of them ranked by the merged token's score
/// (higher first; without scores, minus its position: earlier first), a longer left part first,
/// then a longer right part; ties keep that order (transformers' `generate_merges`).
fn merges_from_vocab(tokens: &[String], vocab: &HashMap<String, u32>, scores: &[f32]) -> Merges {
    // A token's score is its last occurrence's, as Python's `dict(zip(tokens, scores))` keeps.
    let score_of: HashMap<&str, f32> = match scores.len() == tokens.len() {
        true => tokens
            .iter()
            .map(String::as_str)
            .zip(scores.iter().copied())
            .collect(),
        false => HashMap::new(),
    };
    let mut seen = HashMap::with_capacity(tokens.len());
    // (left, right, merged token's rank, chars of left, chars of right)
    let mut all: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for t in tokens {
        if seen.insert(t.as_str(), ()).is_some() {
            continue;
        }
        let rank = match score_of.get(t.as_str()) {
            Some(&s) => s,
            None => -(vocab[t] as f32),
        };
        let mut local: Vec<(&str, &str, f32, usize, usize)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = t.split_at(at);
                (vocab.contains_key(l) && vocab.contains_key(r))
                    .then(|| (l, r, rank, l.chars().count(), r.chars().count()))
            })
            .collect();
        local.sort_by_key(|m| (vocab[m.0], vocab[m.1]));
        all.extend(local);
    }
    // Python's `sorted(key=(rank, len l, len r), reverse=True)`, which is stable.
    all.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    all.into_iter()
        .map(|(l, r, ..)| (l.to_owned(), r.to_owned()))
        .collect()
}

/// The `tokenizers` pipeline of a SentencePiece-style vocabulary (added tokens come after).
pub fn build(tokens: &[String], scores: &[f32]) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let build = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
    let spelled: Vec<String> = tokens.iter().map(|t| respelled(t)).collect();
    let vocab: HashMap<String, u32> = spelled
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges_from_vocab(&spelled, &vocab, scores);
    // A respelled token keeps its file spelling too: as an added token (a run of spaces) it is
    // matched in the raw text and must find its id there.
    let mut model_vocab: Vocab = vocab.iter().map(|(k, &v)| (k.clone(), v)).collect();
    for (i, (t, s)) in tokens.iter().zip(&spelled).enumerate() {
        if t != s {
            model_vocab.entry(t.clone()).or_insert(i as u32);
        }
    }
    let mut builder = BPE::builder()
        .vocab_and_merges(model_vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if vocab.contains_key("<unk>") {
        builder = builder.unk_token("<unk>".into());
    }
    let mut tok = tokenizers::Tokenizer::new(builder.build().map_err(build)?);
    tok.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(build)?))
        .map_err(build)?;
    let split = Split::new(
        SplitPattern::String(" ".into()),
        SplitDelimiterBehavior::MergedWithPrevious,
        false,
    )
    .map_err(build)?;
    tok.with_pre_tokenizer(Some(split));
    Ok(tok)
}

/// Every token's bytes, laid end to end: `<0xXX>` byte tokens their byte, others their text with
/// `▁` read as a space.
pub fn token_bytes(tokens: &[String], types: &[i32]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::with_capacity(tokens.len() * 6);
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    offsets.push(0);
    for (t, &ty) in tokens.iter().zip(types) {
        let byte = (ty == TOKEN_TYPE_BYTE)
            .then(|| t.strip_prefix("<0x")?.strip_suffix('>'))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match byte {
            Some(b) => bytes.push(b),
            None => bytes.extend_from_slice(t.replace('\u{2581}', " ").as_bytes()),
        }
        offsets.push(bytes.len());
    }
    (bytes, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[String]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect()
    }

    #[test]
    fn merges_rank_by_position_then_longer_left_parts() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = merges_from_vocab(&tokens, &vocab(&tokens), &[]);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        // "ab" (position 3) first; then "abc" (4) as ab+c before a+bc; then "bc" (5).
        assert_eq!(m, vec![("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]);
        // With scores the best score merges first, whatever the position: "bc" now leads.
        let scores = [0.0, 0.0, 0.0, -2.0, -3.0, -1.0];
        let m = merges_from_vocab(&tokens, &vocab(&tokens), &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]);
    }

    #[test]
    fn byte_tokens_and_spaces_decode_to_their_bytes() {
        let tokens: Vec<String> = ["<0x0A>", "\u{2581}hi", "  ", "<b>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (bytes, offsets) = token_bytes(&tokens, &[TOKEN_TYPE_BYTE, 1, 4, 3]);
        assert_eq!(&bytes[offsets[0]..offsets[1]], b"\n");
        assert_eq!(&bytes[offsets[1]..offsets[2]], b" hi");
        assert_eq!(&bytes[offsets[2]..offsets[3]], b"  ");
        assert_eq!(&bytes[offsets[3]..offsets[4]], b"<b>");
        assert_eq!(respelled("  "), "\u{2581}\u{2581}");
        assert_eq!(respelled(" \t"), "\u{2581}\u{2581}");
        assert_eq!(respelled("\t\t"), "\t\t");
    }
}
