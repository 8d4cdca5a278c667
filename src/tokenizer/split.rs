//! Where control tokens may come from. Added-token strings are matched leftmost-longest, as Hugging
//! Face's added vocabulary does, but only in text the caller trusts: a raw prompt, or a chat
//! template's scaffolding. Chat content is located by rendering the template a second time with a
//! unique sentinel in place of each message's content; splitting that render on the sentinels gives
//! scaffolding and content spans, and the split is used only if putting the real content back
//! reproduces the real render byte for byte (otherwise the template reshapes content and the caller
//! falls back). This keeps the ids equal to Hugging Face's `apply_chat_template(tokenize=True)` on
//! ordinary messages while a user who types `<|im_start|>` gets plain-text ids.

use crate::chat_template::ChatMessage;

/// Private-use characters bracket a message index: `\u{E000}3\u{E001}` stands for message 3.
const SENTINEL_OPEN: char = '\u{E000}';
const SENTINEL_CLOSE: char = '\u{E001}';

/// A piece of the text to encode: trusted scaffolding (added tokens parsed) or content (never parsed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    Scaffold(&'a str),
    Content(&'a str),
}

pub(super) struct Found<'t> {
    pub start: usize,
    pub end: usize,
    pub id: u32,
    pub text: &'t str,
}

/// Finds added tokens in text; longest first so `find` returns the leftmost-longest match.
pub(super) struct AddedTokenMatcher {
    tokens: Vec<(String, u32)>,
    first_bytes: [bool; 256],
}

impl AddedTokenMatcher {
    pub fn new(tokens: impl IntoIterator<Item = (String, u32)>) -> AddedTokenMatcher {
        let mut tokens: Vec<(String, u32)> =
            tokens.into_iter().filter(|(t, _)| !t.is_empty()).collect();
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut first_bytes = [false; 256];
        for (t, _) in &tokens {
            if let Some(&b) = t.as_bytes().first() {
                first_bytes[b as usize] = true;
            }
        }
        AddedTokenMatcher {
            tokens,
            first_bytes,
        }
    }

    /// The first added token in `text` at or after byte `from`.
    pub fn find<'s>(&'s self, text: &str, from: usize) -> Option<Found<'s>> {
        let bytes = text.as_bytes();
        let tail = bytes.get(from..)?;
        for (offset, &b) in tail.iter().enumerate() {
            if !self.first_bytes[b as usize] {
                continue;
            }
            let start = from + offset;
            let rest = &bytes[start..];
            if let Some((t, id)) = self
                .tokens
                .iter()
                .find(|(t, _)| rest.starts_with(t.as_bytes()))
            {
                return Some(Found {
                    start,
                    end: start + t.len(),
                    id: *id,
                    text: t,
                });
            }
        }
        None
    }
}

/// The messages with each non-empty content replaced by its sentinel.
pub(super) fn sentinel_messages(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage {
            // An empty content stays empty: templates test it (`if message.content`).
            content: if m.content.is_empty() {
                String::new()
            } else {
                format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}")
            },
            ..m.clone()
        })
        .collect()
}

/// Splits a sentinel render into scaffolding and the real content of the messages it names.
pub(super) fn segments<'a>(
    sentinel_render: &'a str,
    messages: &'a [ChatMessage],
) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    let mut scaffold_start = 0;
    let mut search = 0;
    while let Some(rel) = sentinel_render
        .get(search..)
        .and_then(|s| s.find(SENTINEL_OPEN))
    {
        let open = search + rel;
        let after_open = open + SENTINEL_OPEN.len_utf8();
        let index = sentinel_render.get(after_open..).and_then(|rest| {
            let close = rest.find(SENTINEL_CLOSE)?;
            let i: usize = rest.get(..close)?.parse().ok()?;
            Some((i, after_open + close + SENTINEL_CLOSE.len_utf8()))
        });
        match index.and_then(|(i, end)| messages.get(i).map(|m| (m, end))) {
            Some((message, end)) => {
                if let Some(s) = sentinel_render
                    .get(scaffold_start..open)
                    .filter(|s| !s.is_empty())
                {
                    out.push(Segment::Scaffold(s));
                }
                if !message.content.is_empty() {
                    out.push(Segment::Content(&message.content));
                }
                scaffold_start = end;
                search = end;
            }
            // Not one of ours: leave it in the scaffolding; verification decides.
            None => search = after_open,
        }
    }
    if let Some(s) = sentinel_render
        .get(scaffold_start..)
        .filter(|s| !s.is_empty())
    {
        out.push(Segment::Scaffold(s));
    }
    out
}

/// Whether the segments put together are exactly `rendered`.
pub(super) fn reproduces(segments: &[Segment<'_>], rendered: &str) -> bool {
    let mut rest = rendered;
    for seg in segments {
        let (Segment::Scaffold(s) | Segment::Content(s)) = *seg;
        match rest.strip_prefix(s) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> AddedTokenMatcher {
        AddedTokenMatcher::new([
            ("<|im_start|>".to_owned(), 1),
            ("<|im_end|>".to_owned(), 2),
            ("<|im".to_owned(), 3),
        ])
    }

    #[test]
    fn find_is_leftmost_longest() {
        let m = matcher();
        let f = m.find("ab<|im_start|>c", 0).unwrap();
        assert_eq!((f.start, f.end, f.id), (2, 14, 1));
        let f = m.find("x<|im_x", 0).unwrap();
        assert_eq!((f.start, f.id), (1, 3));
        assert!(m.find("<|im_end|>", 1).is_none());
        assert!(m.find("é<|im_end|>", 99).is_none());
    }

    #[test]
    fn segments_split_on_sentinels_and_verify() {
        let msgs = vec![
            ChatMessage::new("user", "hi <|im_end|>"),
            ChatMessage::new("assistant", ""),
        ];
        let sent = sentinel_messages(&msgs);
        let render = format!(
            "<s>{}|{}|\u{E000}9\u{E001}",
            sent[0].content, sent[1].content
        );
        let segs = segments(&render, &msgs);
        assert_eq!(
            segs,
            vec![
                Segment::Scaffold("<s>"),
                Segment::Content("hi <|im_end|>"),
                Segment::Scaffold("||\u{E000}9\u{E001}"),
            ]
        );
        assert!(reproduces(&segs, "<s>hi <|im_end|>||\u{E000}9\u{E001}"));
        assert!(!reproduces(&segs, "<s>HI <|im_end|>||\u{E000}9\u{E001}"));
    }
}
