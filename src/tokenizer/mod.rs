//! Byte-level BPE tokenizers (each family's pre-tokenizer from `pre`), built from GGUF metadata (`tokenizer.ggml.*`) with the
//! `tokenizers` crate, and the three ways text becomes ids: a raw prompt (special-token strings are
//! parsed), plain text (they are not), and a chat rendered by its template (only the template's own
//! scaffolding yields control tokens). Decoding maps each id to its bytes; `incremental` streams them.

mod incremental;
pub mod pre;
mod split;
mod spm;

pub use incremental::IncrementalDecoder;

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::chat_template::{ChatMessage, ChatTemplate, TemplateError};
use crate::gguf::{GgufError, Metadata};
use split::{AddedTokenMatcher, Segment};

pub const MODEL_KEY: &str = "tokenizer.ggml.model";
pub const PRE_KEY: &str = "tokenizer.ggml.pre";
pub const TOKENS_KEY: &str = "tokenizer.ggml.tokens";
pub const MERGES_KEY: &str = "tokenizer.ggml.merges";
pub const TOKEN_TYPE_KEY: &str = "tokenizer.ggml.token_type";
pub const BOS_KEY: &str = "tokenizer.ggml.bos_token_id";
pub const EOS_KEY: &str = "tokenizer.ggml.eos_token_id";
pub const EOT_KEY: &str = "tokenizer.ggml.eot_token_id";
pub const ADD_BOS_KEY: &str = "tokenizer.ggml.add_bos_token";
pub const SCORES_KEY: &str = "tokenizer.ggml.scores";
pub const SPACE_PREFIX_KEY: &str = "tokenizer.ggml.add_space_prefix";

pub use pre::QWEN2_SPLIT_REGEX;
/// Token strings that end a turn in the supported families' chat models (ChatML's, Llama 3's),
/// whatever the file names as eos.
const TURN_END_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
];

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("metadata key '{key}': {source}")]
    Metadata {
        key: &'static str,
        #[source]
        source: GgufError,
    },
    #[error("metadata key '{MODEL_KEY}' is '{0}'; supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece-style BPE)")]
    UnsupportedModel(String),
    #[error("metadata key '{PRE_KEY}' is '{0}'; supported pre-tokenizers: {names}", names = pre::supported())]
    UnsupportedPreTokenizer(String),
    #[error("metadata key '{key}' has {found} entries; expected {expected} (one per token)")]
    LengthMismatch {
        key: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("metadata key '{MERGES_KEY}' entry {index} is '{merge}'; expected two tokens separated by a space")]
    BadMerge { index: usize, merge: String },
    #[error("metadata key '{key}' is {id}, outside the vocabulary of {vocab_size} tokens")]
    SpecialIdOutOfRange {
        key: &'static str,
        id: u64,
        vocab_size: usize,
    },
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("building the BPE tokenizer failed: {0}")]
    Build(String),
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the chat template transforms message content, so content holding special-token text cannot be kept plain; remove '{0}' from the messages")]
    ContentNotIsolated(String),
    #[error("tools and tool calls are written into the chat template's own text, so they cannot hold special-token text; remove '{0}'")]
    ToolTextNotPlain(String),
}

/// The tokenizer-relevant metadata as plain slices, so tests and tools can build one without a file.
#[derive(Clone, Copy, Debug)]
pub struct VocabParts<'a> {
    pub model: &'a str,
    pub pre: &'a str,
    pub tokens: &'a [String],
    pub merges: &'a [String],
    pub token_types: &'a [i32],
    pub bos_id: Option<u64>,
    pub eos_id: Option<u64>,
    pub eot_id: Option<u64>,
    pub add_bos: bool,
    /// SentencePiece-style vocabularies: how the merges recovered from the vocabulary are ranked,
    /// and whether a space is put before the text (`tokenizer.ggml.add_space_prefix`).
    pub spm: SpmOptions<'a>,
}

/// What a SentencePiece-style vocabulary needs besides its tokens (ignored for byte-level BPE).
#[derive(Clone, Copy, Debug, Default)]
pub struct SpmOptions<'a> {
    /// `tokenizer.ggml.scores`: a higher score merges first. Empty: rank by position in the file
    /// (Gemma, whose scores do not follow its merge order, as transformers handles it).
    pub scores: &'a [f32],
    /// Put a space (`▁`) before the text when it does not start with one (Llama 2, Mistral,
    /// TinyLlama; not Gemma) — only before the first stretch at the start of the input, as
    /// transformers' `Metaspace(prepend_scheme="first")` does.
    pub space_prefix: bool,
}

pub struct Tokenizer {
    /// Encodes with special-token strings left as text; control tokens are found by `added` instead.
    plain: tokenizers::Tokenizer,
    /// Every added token (control and user-defined), matched leftmost-longest like Hugging Face.
    added: AddedTokenMatcher,
    /// Decoded bytes of every token, `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    special: Vec<bool>,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    add_bos: bool,
    /// A space before the text at the start of the input (SentencePiece `add_space_prefix`).
    space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_ids", &self.eos_ids)
            .field("bos_id", &self.bos_id)
            .finish_non_exhaustive()
    }
}

/// The SentencePiece settings of a file: merges ranked by its scores except for Gemma files
/// (by position, as transformers' Gemma builder does), a space prefix unless the file says not
/// (llama.cpp's default for these vocabularies is to add one).
fn spm_options(meta: &Metadata) -> Result<SpmOptions<'_>, TokenizerError> {
    let arch = meta
        .opt_str("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("");
    let scores = match meta.contains_key(SCORES_KEY) && !arch.starts_with("gemma") {
        true => meta.f32s(SCORES_KEY).map_err(meta_err(SCORES_KEY))?,
        false => &[],
    };
    let space_prefix = meta
        .opt_bool(SPACE_PREFIX_KEY)
        .map_err(meta_err(SPACE_PREFIX_KEY))?
        .unwrap_or(true);
    Ok(SpmOptions {
        scores,
        space_prefix,
    })
}

fn meta_err(key: &'static str) -> impl FnOnce(GgufError) -> TokenizerError {
    move |source| TokenizerError::Metadata { key, source }
}

impl Tokenizer {
    pub fn from_metadata(meta: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let parts = VocabParts {
            model: meta.str(MODEL_KEY).map_err(meta_err(MODEL_KEY))?,
            pre: meta
                .opt_str(PRE_KEY)
                .map_err(meta_err(PRE_KEY))?
                .unwrap_or("default"),
            tokens: meta.strings(TOKENS_KEY).map_err(meta_err(TOKENS_KEY))?,
            // SentencePiece-style files list none: the merges follow from the vocabulary.
            merges: match meta.contains_key(MERGES_KEY) {
                true => meta.strings(MERGES_KEY).map_err(meta_err(MERGES_KEY))?,
                false => &[],
            },
            token_types: meta
                .i32s(TOKEN_TYPE_KEY)
                .map_err(meta_err(TOKEN_TYPE_KEY))?,
            bos_id: meta.opt_u64(BOS_KEY).map_err(meta_err(BOS_KEY))?,
            eos_id: meta.opt_u64(EOS_KEY).map_err(meta_err(EOS_KEY))?,
            eot_id: meta.opt_u64(EOT_KEY).map_err(meta_err(EOT_KEY))?,
            add_bos: meta
                .opt_bool(ADD_BOS_KEY)
                .map_err(meta_err(ADD_BOS_KEY))?
                .unwrap_or(false),
            spm: spm_options(meta)?,
        };
        Tokenizer::from_parts(&parts)
    }

    pub fn from_parts(parts: &VocabParts<'_>) -> Result<Tokenizer, TokenizerError> {
        let kind = match parts.model {
            "gpt2" => match pre::lookup(parts.pre) {
                Some(pre) => Kind::ByteLevel(pre),
                None => {
                    return Err(TokenizerError::UnsupportedPreTokenizer(
                        parts.pre.to_owned(),
                    ))
                }
            },
            "llama" => Kind::SentencePiece,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let n = parts.tokens.len();
        if parts.token_types.len() != n {
            return Err(TokenizerError::LengthMismatch {
                key: TOKEN_TYPE_KEY,
                found: parts.token_types.len(),
                expected: n,
            });
        }
        let bos_id = checked_id(BOS_KEY, parts.bos_id, n)?;
        let eos_ids = end_of_sequence_ids(parts)?;
        let special: Vec<bool> = parts
            .token_types
            .iter()
            .map(|&t| t == TOKEN_TYPE_CONTROL)
            .collect();
        // The BPE model is most of the build (~0.2 s for 151k merges); the byte table and the
        // added-token matcher are made beside it.
        let (plain, side) = std::thread::scope(|scope| {
            let side = scope.spawn(|| {
                let added = AddedTokenMatcher::new(
                    parts
                        .tokens
                        .iter()
                        .zip(parts.token_types)
                        .enumerate()
                        .filter_map(|(id, (text, &ty))| {
                            let is_added =
                                ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED;
                            (is_added && !text.is_empty()).then(|| (text.clone(), id as u32))
                        }),
                );
                let bytes = match kind {
                    Kind::ByteLevel(_) => token_bytes(parts.tokens),
                    Kind::SentencePiece => spm::token_bytes(parts.tokens, parts.token_types),
                };
                (added, bytes)
            });
            let plain = match kind {
                Kind::ByteLevel(pre) => build_bpe(parts, pre),
                Kind::SentencePiece => spm::build(parts.tokens, parts.spm.scores),
            }
            .and_then(|tok| with_added_tokens(tok, parts));
            let side = side
                .join()
                .map_err(|_| TokenizerError::Build("a tokenizer build thread panicked".into()));
            (plain, side)
        });
        let (plain, (added, (bytes, offsets))) = (plain?, side?);
        Ok(Tokenizer {
            plain,
            added,
            bytes,
            offsets,
            special,
            eos_ids,
            bos_id,
            add_bos: parts.add_bos,
            space_prefix: kind == Kind::SentencePiece && parts.spm.space_prefix,
        })
    }

    /// Number of token ids (the embedding rows), including control and padding tokens.
    pub fn vocab_size(&self) -> usize {
        self.special.len()
    }

    /// Raw prompt: the caller's whole prompt; special tokens written in it ARE parsed
    /// (llama-server `/completion`, Hugging Face `encode(text, add_special_tokens=False)`).
    /// A vocabulary that adds BOS (`add_bos_token`) gets it first, as transformers' and
    /// llama.cpp's tokenizers add it (also before a `<bos>` the text wrote). A chat template writes
    /// its own BOS, so `encode_chat` adds none.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode_segments(&[Segment::Scaffold(text)])?;
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Plain text: special-token strings are ordinary text (with the space prefix of a
    /// SentencePiece vocabulary that adds one).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_stretch(text, true)
    }

    fn encode_plain_inner(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let encoding = self
            .plain
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Chat: renders the template (add_generation_prompt = true) and tokenizes it so that only the
    /// template's own scaffolding yields control tokens; message content is tokenized as plain text.
    pub fn encode_chat(
        &self,
        template: &ChatTemplate,
        messages: &[ChatMessage],
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode_chat_with_text(template, messages)
            .map(|(_, ids)| ids)
    }

    /// `encode_chat`, also returning the rendered prompt text.
    pub fn encode_chat_with_text(
        &self,
        template: &ChatTemplate,
        messages: &[ChatMessage],
    ) -> Result<(String, Vec<u32>), TokenizerError> {
        self.encode_chat_tools(template, messages, None)
    }

    /// `encode_chat_with_text` with function tools in the template's `tools`. Tool definitions and
    /// the calls of assistant turns are written by the template into its scaffolding, so an
    /// added-token string in them is refused rather than read as a control token.
    pub fn encode_chat_tools(
        &self,
        template: &ChatTemplate,
        messages: &[ChatMessage],
        tools: Option<&[minijinja::Value]>,
    ) -> Result<(String, Vec<u32>), TokenizerError> {
        self.check_tool_text(messages, tools)?;
        let rendered = template.render_with_tools(messages, tools, true)?;
        let sentinel_render = template
            .render_with_tools(&split::sentinel_messages(messages), tools, true)
            .ok();
        let segments = sentinel_render
            .as_deref()
            .map(|s| split::segments(s, messages))
            .filter(|segments| split::reproduces(segments, &rendered));
        let ids = match segments {
            Some(segments) => self.encode_segments(&segments)?,
            None => {
                // The template reshapes content, so its spans cannot be found in the output. That is
                // only safe to parse whole when no message holds an added-token string.
                if let Some(found) = messages.iter().find_map(|m| self.added.find(&m.content, 0)) {
                    return Err(TokenizerError::ContentNotIsolated(found.text.to_owned()));
                }
                self.encode_segments(&[Segment::Scaffold(&rendered)])?
            }
        };
        Ok((rendered, ids))
    }

    /// Refuses tools and tool calls that hold an added-token string (they render as scaffolding).
    fn check_tool_text(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[minijinja::Value]>,
    ) -> Result<(), TokenizerError> {
        let calls = messages.iter().flat_map(|m| &m.tool_calls);
        let texts = tools
            .into_iter()
            .flatten()
            .map(|t| t.to_string())
            .chain(calls.map(|c| format!("{} {}", c.function.name, c.function.arguments)));
        for text in texts {
            if let Some(found) = self.added.find(&text, 0) {
                return Err(TokenizerError::ToolTextNotPlain(found.text.to_owned()));
            }
        }
        Ok(())
    }

    /// Hugging Face's order of work: split on added tokens found in scaffolding, then encode each
    /// stretch between them as one text (scaffolding and content together), so BPE merges and the
    /// split regex see exactly what they would see on the whole string.
    fn encode_segments(&self, segments: &[Segment<'_>]) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        let mut stretch = String::new();
        // Only the stretch at the very start of the input may get the space prefix.
        let mut at_start = true;
        for segment in segments {
            match *segment {
                Segment::Content(text) => stretch.push_str(text),
                Segment::Scaffold(text) => {
                    let mut pos = 0;
                    while let Some(found) = self.added.find(text, pos) {
                        stretch.push_str(&text[pos..found.start]);
                        ids.extend(self.encode_stretch(&stretch, at_start)?);
                        at_start = false;
                        stretch.clear();
                        ids.push(found.id);
                        pos = found.end;
                    }
                    stretch.push_str(&text[pos..]);
                }
            }
        }
        ids.extend(self.encode_stretch(&stretch, at_start)?);
        Ok(ids)
    }

    /// Text between special tokens; at the start of the input a SentencePiece vocabulary with a
    /// space prefix gets one first, unless the text already starts with a space.
    /// (transformers' `Metaspace` with `prepend_scheme="first"`: text that starts with an added
    /// token matched whole — a user-defined one; special ones never reach here — gets none.)
    fn encode_stretch(&self, text: &str, at_start: bool) -> Result<Vec<u32>, TokenizerError> {
        let starts_added = || {
            self.added
                .find(text, 0)
                .is_some_and(|m| m.start == 0 && !self.special[m.id as usize])
        };
        if self.space_prefix
            && at_start
            && !text.is_empty()
            && !text.starts_with(' ')
            && !starts_added()
        {
            return self.encode_plain_inner(&format!(" {text}"));
        }
        self.encode_plain_inner(text)
    }

    /// Text of `ids`, skipping nothing: control tokens appear as their text (`<|im_end|>`); one
    /// leading space dropped where the vocabulary prefixes one (`strips_leading_space`).
    /// Byte sequences that are not UTF-8 become U+FFFD, as in Hugging Face's ByteLevel decoder.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            buf.extend_from_slice(self.bytes_of(id)?);
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(match (self.space_prefix, text.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_owned(),
            _ => text.into_owned(),
        })
    }

    /// The bytes token `id` decodes to (may be part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let start = *self.offsets.get(i)?;
        let end = *self.offsets.get(i + 1)?;
        self.bytes.get(start..end)
    }

    fn bytes_of(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.token_bytes(id).ok_or(TokenizerError::UnknownId {
            id,
            vocab_size: self.vocab_size(),
        })
    }

    /// The text token `id` decodes to on its own (lossy where it is part of a character).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.token_bytes(id)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Ids that end generation: eos, eot, and `<|im_end|>` / `<|endoftext|>` when present; deduped.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether decoded text drops one leading space: a SentencePiece vocabulary with a space
    /// prefix put it there (transformers' decoder strips it: `Strip(left=1)`).
    pub fn strips_leading_space(&self) -> bool {
        self.space_prefix
    }

    /// `tokenizer.ggml.add_bos_token` (false for Qwen2).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `id` is a control token (GGUF token type 3).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Id of a token by its vocabulary string (e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.plain.token_to_id(token)
    }
}

/// `id` from `key` as a token id, refused when it is outside the vocabulary.
fn checked_id(
    key: &'static str,
    id: Option<u64>,
    vocab_size: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(id) = id else { return Ok(None) };
    u32::try_from(id)
        .ok()
        .filter(|&i| (i as usize) < vocab_size)
        .map(Some)
        .ok_or(TokenizerError::SpecialIdOutOfRange {
            key,
            id,
            vocab_size,
        })
}

/// eos, eot, then the ids of `<|im_end|>` and `<|endoftext|>` when the vocabulary has them; deduped.
fn end_of_sequence_ids(parts: &VocabParts<'_>) -> Result<Vec<u32>, TokenizerError> {
    let n = parts.tokens.len();
    let listed = [
        checked_id(EOS_KEY, parts.eos_id, n)?,
        checked_id(EOT_KEY, parts.eot_id, n)?,
    ];
    let named = TURN_END_TOKENS
        .iter()
        .filter_map(|t| parts.tokens.iter().position(|x| x == t).map(|i| i as u32));
    let mut ids: Vec<u32> = Vec::new();
    for id in listed.into_iter().flatten().chain(named) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The two kinds of vocabulary a GGUF file holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `gpt2`: byte-level BPE with merges and a pre-tokenizer named by `tokenizer.ggml.pre`.
    ByteLevel(&'static pre::PreTokenizer),
    /// `llama`: SentencePiece-style BPE with byte fallback.
    SentencePiece,
}

/// The `tokenizers` pipeline that reproduces the family's `tokenizer.json` from the GGUF arrays.
fn build_bpe(
    parts: &VocabParts<'_>,
    pre: &pre::PreTokenizer,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let build = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
    // The vocabulary map and the split merges are independent: made side by side.
    let (vocab, merges) = std::thread::scope(|scope| {
        let vocab = scope.spawn(|| -> Vocab {
            parts
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect()
        });
        let merges = split_merges(parts.merges);
        let vocab = vocab
            .join()
            .map_err(|_| TokenizerError::Build("a tokenizer build thread panicked".into()));
        (vocab, merges)
    });
    let (vocab, merges) = (vocab?, merges?);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(build)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let mut steps = Vec::new();
    for regex in pre.splits {
        let pattern = SplitPattern::Regex((*regex).to_owned());
        steps.push(
            Split::new(pattern, SplitDelimiterBehavior::Isolated, false)
                .map_err(build)?
                .into(),
        );
    }
    steps.push(ByteLevel::new(false, false, false).into());
    if pre.nfc {
        tok.with_normalizer(Some(NFC)).map_err(build)?;
    }
    tok.with_pre_tokenizer(Some(Sequence::new(steps)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

/// Control tokens as special added tokens, user-defined ones as plain added tokens matched whole.
fn with_added_tokens(
    mut tok: tokenizers::Tokenizer,
    parts: &VocabParts<'_>,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let build = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
    let mut specials = Vec::new();
    let mut user_defined = Vec::new();
    for (text, &ty) in parts.tokens.iter().zip(parts.token_types) {
        match ty {
            TOKEN_TYPE_CONTROL => specials.push(AddedToken::from(text.clone(), true)),
            TOKEN_TYPE_USER_DEFINED => {
                user_defined.push(AddedToken::from(text.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tok.add_special_tokens(specials).map_err(build)?;
    tok.add_tokens(user_defined).map_err(build)?;
    // Control tokens are matched by `AddedTokenMatcher` only where parsing them is allowed.
    tok.set_encode_special_tokens(true);
    Ok(tok)
}

/// Every token's decoded bytes, laid end to end, by the ByteLevel decoder's rule: each char through
/// the byte map, or the token's own UTF-8 when any char is outside the map.
/// `"a b"` merge strings as pairs; an entry without two non-empty halves is an error naming it.
fn split_merges(merges: &[String]) -> Result<Merges, TokenizerError> {
    let mut out: Merges = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        match merge.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => {
                out.push((a.to_owned(), b.to_owned()))
            }
            _ => {
                return Err(TokenizerError::BadMerge {
                    index,
                    merge: merge.clone(),
                })
            }
        }
    }
    Ok(out)
}

fn token_bytes(tokens: &[String]) -> (Vec<u8>, Vec<usize>) {
    let char_to_byte: HashMap<char, u8> = byte_level_chars()
        .into_iter()
        .map(|(b, c)| (c, b))
        .collect();
    let mut bytes = Vec::with_capacity(tokens.len() * 6);
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    offsets.push(0);
    for token in tokens {
        let mapped: Option<Vec<u8>> = token
            .chars()
            .map(|c| char_to_byte.get(&c).copied())
            .collect();
        match mapped {
            Some(b) => bytes.extend_from_slice(&b),
            None => bytes.extend_from_slice(token.as_bytes()),
        }
        offsets.push(bytes.len());
    }
    (bytes, offsets)
}

/// GPT-2's byte → printable char table used by byte-level BPE.
fn byte_level_chars() -> Vec<(u8, char)> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b, char::from(b))
            } else {
                let c = char::from_u32(next).unwrap_or('\u{FFFD}');
                next += 1;
                (b, c)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_matching_gpt2() {
        let table = byte_level_chars();
        let chars: std::collections::HashSet<char> = table.iter().map(|(_, c)| *c).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(table[b' ' as usize].1, 'Ġ');
        assert_eq!(table[b'\n' as usize].1, 'Ċ');
        assert_eq!(table[b'a' as usize].1, 'a');
    }

    #[test]
    fn every_token_decodes_like_the_tokenizers_byte_level_decoder() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-vocab.gguf");
        let file = crate::gguf::GgufFile::open(&path).unwrap();
        let t = Tokenizer::from_metadata(file.metadata()).unwrap();
        for id in 0..t.vocab_size() as u32 {
            let reference = t.plain.decode(&[id], false).unwrap();
            assert_eq!(t.decode(&[id]).unwrap(), reference, "token {id}");
        }
    }
}
