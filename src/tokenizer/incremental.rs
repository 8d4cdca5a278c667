//! Streaming detokenization. Byte-level BPE decodes each token to bytes on its own, so the text of
//! a sequence is the lossy UTF-8 of the concatenated bytes; the decoder keeps only the unfinished
//! tail of a character (at most 3 bytes) between pushes, so each push costs the token's length and
//! the pieces always add up to `Tokenizer::decode` of the whole sequence (the first piece drops a
//! leading space where `decode` does).

use super::{Tokenizer, TokenizerError};

#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    /// Bytes not yet emitted: a prefix of one UTF-8 character.
    pending: Vec<u8>,
    /// Whether any text has been emitted (the first may drop a leading space, as `decode` does).
    emitted: bool,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        IncrementalDecoder {
            pending: Vec::with_capacity(8),
            emitted: false,
        }
    }

    /// Adds one token; returns the text it completes (possibly empty, never half a character).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        let bytes = tokenizer.bytes_of(id)?;
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            let rest = self.pending.get(start..).unwrap_or_default();
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(
                        rest.get(..valid).unwrap_or_default(),
                    ));
                    match e.error_len() {
                        // A definite error: one U+FFFD for it, exactly as `from_utf8_lossy` does.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + len;
                        }
                        // An unfinished character: keep it for the next token.
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start.min(self.pending.len()));
        Ok(self.first_text(tokenizer.strips_leading_space(), out))
    }

    /// `out`, without its leading space when it is the stream's first text and `strip`.
    fn first_text(&mut self, strip: bool, out: String) -> String {
        if self.emitted || out.is_empty() {
            return out;
        }
        self.emitted = true;
        match (strip, out.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_owned(),
            _ => out,
        }
    }

    /// Ends the stream: an unfinished character becomes U+FFFD, as in `decode`.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
