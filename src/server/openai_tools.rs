//! Tool calls in OpenAI's response shapes: a whole message's `tool_calls` with the text outside the
//! blocks as `content`, and the streamed `delta.tool_calls` (each call in one delta once its block
//! closes). Used only when the request gave tools; call ids are `call_` and 16 random hex digits.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::openai::tool_calls::{self, ParsedCall, Piece, ToolCallStream};
use crate::rng::Rng;

static CALLS: AtomicU64 = AtomicU64::new(0);

fn call_id() -> String {
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let seed = crate::request::clock_seed() ^ n.rotate_left(40);
    format!("call_{:016x}", Rng::new(seed).next_u64())
}

fn call_json(call: ParsedCall, index: Option<usize>) -> Value {
    let mut v = json!({
        "id": call_id(), "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

/// The assistant message for `text`, and whether it holds tool calls; `names` are the tools'.
pub fn message(text: &str, names: &[String]) -> (Value, bool) {
    let parsed = tool_calls::parse(text, names);
    let mut m = json!({"role": "assistant", "content": parsed.content});
    let called = !parsed.calls.is_empty();
    if called {
        let calls: Vec<Value> = parsed
            .calls
            .into_iter()
            .map(|c| call_json(c, None))
            .collect();
        m["tool_calls"] = Value::Array(calls);
    }
    (m, called)
}

/// A stream's deltas: content while it is plain text, one delta per call.
#[derive(Debug, Default)]
pub struct ToolDeltas {
    stream: ToolCallStream,
    calls: usize,
}

impl ToolDeltas {
    pub fn new(names: Vec<String>) -> ToolDeltas {
        ToolDeltas {
            stream: ToolCallStream::new(names),
            calls: 0,
        }
    }

    pub fn feed(&mut self, text: &str) -> Vec<Value> {
        let pieces = self.stream.feed(text);
        self.deltas(pieces)
    }

    pub fn finish(&mut self) -> Vec<Value> {
        let pieces = self.stream.finish();
        self.deltas(pieces)
    }

    /// Whether any call was sent.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    fn deltas(&mut self, pieces: Vec<Piece>) -> Vec<Value> {
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => json!({"content": t}),
                Piece::Call(c) => {
                    self.calls += 1;
                    json!({"tool_calls": [call_json(c, Some(self.calls - 1))]})
                }
            })
            .collect()
    }
}
