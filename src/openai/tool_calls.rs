//! Tool calls in generated text, in the formats of the families whose templates render tools:
//! - Qwen2.5's (Hermes-style) blocks `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
//!   cut out of the text whole or as it streams. A block whose JSON does not parse, or one still
//!   open when the text ends, stays plain text. Text outside the blocks loses its surrounding
//!   whitespace (the newlines between blocks).
//! - Llama 3.1/3.2/3.3's whole answer `{"name": ..., "parameters": {...}}` (their templates ask for
//!   exactly that; the call is the turn, ended by `<|eot_id|>` or `<|eom_id|>`), after an optional
//!   `<|python_tag|>`.
//!
//! Small models often answer with the bare object in Qwen's case too (Qwen2.5-Coder-0.5B-Instruct
//! does so greedily), so any whole answer that is exactly one such object (`arguments` or
//! `parameters`) naming one of the request's tools is a call; such an answer is held back until it
//! ends.

use serde_json::value::RawValue;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// What Llama 3.1 writes before a call when its tokenizer's special tokens reach the text.
const PYTHON_TAG: &str = "<|python_tag|>";

/// One call the model made; `arguments` is JSON text (an object for well-formed calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// What a stream of text becomes, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(ParsedCall),
}

/// A whole generation split into content (`None` when nothing is left) and calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ParsedCall>,
}

/// Splits `text` as the stream parser would, so whole and streamed answers agree; `names` are the
/// request's tool names.
pub fn parse(text: &str, names: &[String]) -> Parsed {
    let mut stream = ToolCallStream::new(names.to_vec());
    let mut pieces = stream.feed(text);
    pieces.extend(stream.finish());
    let mut content = String::new();
    let mut calls = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => content.push_str(&t),
            Piece::Call(c) => calls.push(c),
        }
    }
    Parsed {
        content: (!content.is_empty()).then_some(content),
        calls,
    }
}

/// The streaming parser: text that may be the start of `<tool_call>` is held back until it is
/// known, a block is held until it closes, and whitespace is held until text follows it.
#[derive(Debug, Default)]
pub struct ToolCallStream {
    names: Vec<String>,
    pending: String,
    in_call: bool,
    wrote_text: bool,
    held_space: String,
    /// Whether the answer may be one bare call object: `None` until its first visible character.
    bare: Option<bool>,
}

impl ToolCallStream {
    pub fn new(names: Vec<String>) -> ToolCallStream {
        ToolCallStream {
            names,
            ..ToolCallStream::default()
        }
    }

    /// Takes the next piece of generated text; returns what is now settled.
    pub fn feed(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        if self.holding_bare() {
            return Vec::new();
        }
        self.settle()
    }

    /// Whether everything is held back: the answer so far is blank or starts with `{`.
    fn holding_bare(&mut self) -> bool {
        if let Some(bare) = self.bare {
            return bare;
        }
        let visible = self.pending.trim_start();
        if visible.is_empty() || PYTHON_TAG.starts_with(visible) {
            return true;
        }
        let visible = visible
            .strip_prefix(PYTHON_TAG)
            .unwrap_or(visible)
            .trim_start();
        if visible.is_empty() {
            return true;
        }
        let bare = visible.starts_with('{') && !self.names.is_empty();
        self.bare = Some(bare);
        bare
    }

    fn settle(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(at) = self.pending.find(CLOSE) else {
                    break;
                };
                let body: String = self.pending.drain(..at + CLOSE.len()).collect();
                let body = &body[..at];
                match parse_call(body) {
                    Some(call) => out.push(Piece::Call(call)),
                    None => self.text(&mut out, &format!("{OPEN}{body}{CLOSE}")),
                }
                self.in_call = false;
            } else if let Some(at) = self.pending.find(OPEN) {
                let before: String = self.pending.drain(..at + OPEN.len()).collect();
                self.text(&mut out, &before[..at]);
                self.in_call = true;
            } else {
                let keep = partial_open_len(&self.pending);
                let settled: String = self.pending.drain(..self.pending.len() - keep).collect();
                self.text(&mut out, &settled);
                break;
            }
        }
        out
    }

    /// The end of the text: held text is settled and a block still open is plain text.
    pub fn finish(&mut self) -> Vec<Piece> {
        if self.bare != Some(false) {
            self.bare = Some(false);
            let body = self.pending.trim_start();
            let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
            let call = parse_call(body).filter(|c| self.names.contains(&c.name));
            if let Some(call) = call {
                self.pending.clear();
                return vec![Piece::Call(call)];
            }
        }
        let mut out = self.settle();
        let rest = std::mem::take(&mut self.pending);
        let rest = if std::mem::take(&mut self.in_call) {
            format!("{OPEN}{rest}")
        } else {
            rest
        };
        self.text(&mut out, &rest);
        self.held_space.clear();
        out
    }

    /// Emits `s` as text, dropping leading whitespace and holding trailing whitespace back.
    fn text(&mut self, out: &mut Vec<Piece>, s: &str) {
        let s = if self.wrote_text { s } else { s.trim_start() };
        let body = s.trim_end();
        let trailing = &s[body.len()..];
        if body.is_empty() {
            self.held_space.push_str(trailing);
            return;
        }
        let mut piece = std::mem::take(&mut self.held_space);
        piece.push_str(body);
        out.push(Piece::Text(piece));
        self.wrote_text = true;
        self.held_space.push_str(trailing);
    }
}

/// How many bytes at the end of `s` could begin `<tool_call>`.
fn partial_open_len(s: &str) -> usize {
    (1..OPEN.len())
        .rev()
        .find(|&k| s.ends_with(&OPEN[..k]))
        .unwrap_or(0)
}

#[derive(serde::Deserialize)]
struct CallJson<'a> {
    name: String,
    /// `parameters` in Llama 3's format.
    #[serde(borrow, alias = "parameters")]
    arguments: Option<&'a RawValue>,
}

/// A block's JSON as a call; `None` when it is not `{"name": "...", "arguments": ...}` (or
/// `"parameters"`).
fn parse_call(body: &str) -> Option<ParsedCall> {
    let call: CallJson = serde_json::from_str(body.trim()).ok()?;
    if call.name.is_empty() {
        return None;
    }
    let arguments = match call.arguments.map(RawValue::get) {
        None => "{}".to_owned(),
        // Some models write the arguments as a JSON string holding the object.
        Some(raw) if raw.starts_with('"') => serde_json::from_str::<String>(raw).ok()?,
        Some(raw) => raw.to_owned(),
    };
    Some(ParsedCall {
        name: call.name,
        arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    const PARIS: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn one_call_is_cut_out_with_its_arguments_as_written() {
        let p = parse(PARIS, &[]);
        assert_eq!(p.content, None);
        assert_eq!(p.calls, vec![call("get_weather", r#"{"city": "Paris"}"#)]);
    }

    /// Llama 3.1's answer: the object with `parameters`, streamed in pieces, after the python tag.
    #[test]
    fn llama3_answers_are_calls_whole_or_streamed() {
        let names = vec!["get_weather".to_string()];
        let text = r#"{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}"#;
        let want = vec![call("get_weather", r#"{"city": "Paris", "days": 2}"#)];
        for answer in [
            text.to_string(),
            format!("<|python_tag|>{text}"),
            format!(" \n{text}"),
        ] {
            let p = parse(&answer, &names);
            assert_eq!((p.content, p.calls), (None, want.clone()), "{answer:?}");
            let mut stream = ToolCallStream::new(names.clone());
            let mut pieces = Vec::new();
            for chunk in answer.as_bytes().chunks(5) {
                pieces.extend(stream.feed(std::str::from_utf8(chunk).unwrap()));
            }
            pieces.extend(stream.finish());
            assert_eq!(pieces, vec![Piece::Call(want[0].clone())], "{answer:?}");
        }
        // A tool the request did not offer, or text after the object, is text.
        let p = parse(r#"{"name": "other", "parameters": {}}"#, &names);
        assert!(p.calls.is_empty() && p.content.is_some());
        let p = parse(&format!("{text} and more"), &names);
        assert!(p.calls.is_empty());
    }

    #[test]
    fn two_calls_in_a_row() {
        let text = format!(
            "{PARIS}\n<tool_call>\n{{\"name\": \"time\", \"arguments\": {{}}}}\n</tool_call>"
        );
        let p = parse(&text, &[]);
        assert_eq!(p.content, None);
        assert_eq!(
            p.calls,
            vec![
                call("get_weather", r#"{"city": "Paris"}"#),
                call("time", "{}")
            ]
        );
    }

    #[test]
    fn text_around_the_calls_is_content() {
        let p = parse(&format!("Let me check.\n{PARIS}\nDone, see above.\n"), &[]);
        assert_eq!(
            p.content.as_deref(),
            Some("Let me check.\n\nDone, see above.")
        );
        assert_eq!(p.calls.len(), 1);
    }

    #[test]
    fn malformed_json_stays_plain_text() {
        let text =
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>";
        let p = parse(text, &[]);
        assert_eq!(p.content.as_deref(), Some(text));
        assert!(p.calls.is_empty());
    }

    #[test]
    fn a_block_open_at_the_end_stays_plain_text() {
        let text = "Sure. <tool_call>\n{\"name\": \"get_weather\", \"argu";
        let p = parse(text, &[]);
        assert_eq!(p.content.as_deref(), Some(text));
        assert!(p.calls.is_empty());
        assert_eq!(
            parse("ends in <tool_c", &[]).content.as_deref(),
            Some("ends in <tool_c")
        );
    }

    #[test]
    fn string_arguments_are_unwrapped() {
        let p = parse(
            r#"<tool_call>{"name": "f", "arguments": "{\"a\": 1}"}</tool_call>"#,
            &[],
        );
        assert_eq!(p.calls, vec![call("f", r#"{"a": 1}"#)]);
    }

    #[test]
    fn streaming_byte_by_byte_gives_the_whole_answer() {
        let text = format!("Checking <tool_ the weather.\n{PARIS}\n{PARIS}\nbye");
        let mut stream = ToolCallStream::new(vec!["get_weather".into()]);
        let mut pieces = Vec::new();
        for c in text.chars() {
            let got = stream.feed(&c.to_string());
            // No part of a block is ever released as text.
            for p in &got {
                if let Piece::Text(t) = p {
                    assert!(
                        !t.contains("<tool_call") && !t.contains("get_weather"),
                        "{t:?}"
                    );
                }
            }
            pieces.extend(got);
        }
        pieces.extend(stream.finish());
        let whole = parse(&text, &["get_weather".into()]);
        let text_of = |p: &Piece| match p {
            Piece::Text(t) => Some(t.clone()),
            Piece::Call(_) => None,
        };
        let streamed: String = pieces.iter().filter_map(text_of).collect();
        assert_eq!(Some(streamed), whole.content);
        let calls: Vec<_> = pieces
            .into_iter()
            .filter_map(|p| match p {
                Piece::Call(c) => Some(c),
                Piece::Text(_) => None,
            })
            .collect();
        assert_eq!(calls, whole.calls);
        assert_eq!(
            whole.content.as_deref(),
            Some("Checking <tool_ the weather.\n\n\nbye")
        );
    }

    #[test]
    fn a_bare_call_object_naming_a_tool_is_a_call() {
        let names = ["get_weather".to_owned()];
        let bare = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
        let p = parse(bare, &names);
        assert_eq!(p.calls, vec![call("get_weather", r#"{"city": "Paris"}"#)]);
        assert_eq!(p.content, None);
        // Another name, trailing text or no tools: plain text.
        for (text, names) in [
            (bare.replace("get_weather", "other"), &names[..]),
            (format!("{bare} and more"), &names[..]),
            (bare.to_owned(), &[][..]),
        ] {
            let p = parse(&text, names);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text.as_str()));
        }
    }
}
