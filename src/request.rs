//! The one request format, shared by `layerstream generate` and `POST /generate`: raw JSON in,
//! a `ValidRequest` with every field checked and defaulted out. Each error names the field and
//! the limit it broke.

use serde_json::{Map, Value};

use crate::chat_template::ChatMessage;
use crate::sampler::SamplingParams;

/// Largest accepted request body (HTTP answers 413 above it).
pub const MAX_BODY_BYTES: usize = 1 << 20;
pub const MAX_STOP_STRINGS: usize = 8;
pub const MAX_STOP_BYTES: usize = 256;
pub const MAX_MESSAGES: usize = 1024;
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Most `logit_bias` entries a request may give.
pub const MAX_LOGIT_BIAS: usize = 1024;
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];
const FIELDS: [&str; 15] = [
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "stream",
    "ignore_eos",
];

/// A seed for requests that don't give one: nanoseconds of the wall clock, kept to 53 bits so that
/// the seed a JSON client reads back (often as a double) replays the same output.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 & ((1 << 53) - 1))
        .unwrap_or(0)
}

/// A request body as a JSON object: within the size limit, UTF-8, JSON, an object. Errors name
/// the field serde stopped in where it can.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(err(
            "body",
            format!(
                "request body is {} bytes; the limit is {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| err("body", format!("request body is not valid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let field = match e.classify() {
            serde_json::error::Category::Eof => None,
            _ => field_at(text, e.line(), e.column()),
        };
        let field = field.unwrap_or_else(|| "body".into());
        err(field, format!("request body is not valid JSON: {e}"))
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(err("body", "request body must be a JSON object")),
    }
}

/// The object key whose value holds (line, column) of `text` — where serde stopped on a number
/// out of range, a lone surrogate or nesting too deep — so the error can name the field. The
/// nearest `"key":` before the position, or None (the error then names the body).
fn field_at(text: &str, line: usize, column: usize) -> Option<String> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let before = text.get(..(start + column).min(text.len()))?;
    let colon = before.rfind(':')?;
    let head = before[..colon].trim_end().strip_suffix('"')?;
    let open = head.rfind('"')?;
    let key = &head[open + 1..];
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    plain.then(|| key.to_string())
}

/// A request that failed validation; `field` is the JSON path of the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> RequestError {
    RequestError {
        field: field.into(),
        message: message.into(),
    }
}

/// What to feed the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The caller's whole prompt; special tokens written in it are parsed.
    Prompt(String),
    /// Chat messages, rendered with the model's chat template.
    Messages(Vec<ChatMessage>),
}

/// A request with every field validated and defaulted.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidRequest {
    pub input: Input,
    pub max_tokens: usize,
    /// Whether `max_tokens` was given (if not, generation may stop at the context end).
    pub max_tokens_given: bool,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Function tools for the chat template (`tools`), keys in the order the client wrote them;
    /// set by the OpenAI layer, `None` for `/generate`.
    pub tools: Option<Vec<minijinja::Value>>,
    /// Report each generated token's log-probability and this many alternatives (at most
    /// `logprobs::MAX_TOP_LOGPROBS`); set by the OpenAI layer, `None` for `/generate`.
    pub logprobs: Option<usize>,
    /// Keep generating past an end-of-sequence token (vLLM's and llama-server's `ignore_eos`):
    /// the token is counted but adds no text; stop strings and `max_tokens` still end the request.
    pub ignore_eos: bool,
}

/// Limits that depend on the running model and configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub ctx_size: usize,
}

impl ValidRequest {
    /// Parse and validate a request body. `default_seed` is used when the body has no `seed`.
    pub fn parse(
        body: &[u8],
        limits: Limits,
        default_seed: u64,
    ) -> Result<ValidRequest, RequestError> {
        Self::from_object(&parse_object(body)?, limits, default_seed)
    }

    /// Validate a body already parsed into a JSON object.
    pub fn from_object(
        obj: &Map<String, Value>,
        limits: Limits,
        default_seed: u64,
    ) -> Result<ValidRequest, RequestError> {
        if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(err(
                k.clone(),
                format!(
                    "unknown field '{k}'; accepted fields: {}",
                    FIELDS.join(", ")
                ),
            ));
        }
        let input = match (obj.get("prompt"), obj.get("messages")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "prompt",
                    "give either 'prompt' or 'messages', not both",
                ))
            }
            (None, None) => return Err(err("prompt", "one of 'prompt' or 'messages' is required")),
            (Some(p), None) => Input::Prompt(prompt(p)?),
            (None, Some(m)) => Input::Messages(messages(m)?),
        };
        let max_tokens = opt_uint(obj, "max_tokens")?;
        if let Some(n) = max_tokens {
            if n == 0 || n > limits.ctx_size as u64 {
                return Err(err(
                    "max_tokens",
                    format!(
                        "max_tokens must be >= 1 and <= {} (the context size); got {n}",
                        limits.ctx_size
                    ),
                ));
            }
        }
        let sampling = sampling(obj, default_seed)?;
        let stream = match obj.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("stream", "stream must be a boolean")),
        };
        let ignore_eos = match obj.get("ignore_eos") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("ignore_eos", "ignore_eos must be a boolean")),
        };
        Ok(ValidRequest {
            input,
            max_tokens: max_tokens.map_or(DEFAULT_MAX_TOKENS, |n| n as usize),
            max_tokens_given: max_tokens.is_some(),
            sampling,
            stop: stop(obj.get("stop"))?,
            stream,
            tools: None,
            logprobs: None,
            ignore_eos,
        })
    }

    /// Check that the prompt plus the tokens to generate fit the context; when `max_tokens` was not
    /// given, shrink the default to what fits.
    pub fn fit_context(
        &mut self,
        prompt_tokens: usize,
        limits: Limits,
    ) -> Result<(), RequestError> {
        if prompt_tokens == 0 {
            return Err(err("prompt", "the prompt is empty after tokenization"));
        }
        let room = limits.ctx_size.saturating_sub(prompt_tokens);
        if !self.max_tokens_given && room > 0 {
            self.max_tokens = self.max_tokens.min(room);
        }
        if prompt_tokens + self.max_tokens > limits.ctx_size {
            return Err(err(
                "max_tokens",
                format!(
                    "prompt ({prompt_tokens} tokens) + max_tokens ({}) = {} exceeds the context size of {} tokens",
                    self.max_tokens,
                    prompt_tokens + self.max_tokens,
                    limits.ctx_size
                ),
            ));
        }
        Ok(())
    }
}

/// The sampling fields with `/generate`'s defaults (the OpenAI layer writes its own into `obj`).
fn sampling(obj: &Map<String, Value>, default_seed: u64) -> Result<SamplingParams, RequestError> {
    Ok(SamplingParams {
        temperature: opt_num(
            obj,
            "temperature",
            0.8,
            |v| (0.0..=100.0).contains(&v),
            "must be >= 0.0 and <= 100.0",
        )?,
        top_k: opt_uint(obj, "top_k")?.unwrap_or(40).min(u32::MAX as u64) as usize,
        top_p: opt_num(
            obj,
            "top_p",
            0.95,
            |v| v > 0.0 && v <= 1.0,
            "must be > 0.0 and <= 1.0",
        )?,
        min_p: opt_num(
            obj,
            "min_p",
            0.05,
            |v| (0.0..=1.0).contains(&v),
            "must be >= 0.0 and <= 1.0",
        )?,
        repetition_penalty: opt_num(
            obj,
            "repetition_penalty",
            1.0,
            |v| v > 0.0 && v <= 10.0,
            "must be > 0.0 and <= 10.0",
        )?,
        presence_penalty: penalty(obj, "presence_penalty")?,
        frequency_penalty: penalty(obj, "frequency_penalty")?,
        logit_bias: logit_bias(obj.get("logit_bias"))?,
        seed: opt_uint(obj, "seed")?.unwrap_or(default_seed),
    })
}

fn prompt(v: &Value) -> Result<String, RequestError> {
    match v {
        Value::String(s) if s.is_empty() => Err(err("prompt", "prompt must not be empty")),
        Value::String(s) => Ok(s.clone()),
        _ => Err(err("prompt", "prompt must be a string")),
    }
}

fn messages(v: &Value) -> Result<Vec<ChatMessage>, RequestError> {
    let Value::Array(items) = v else {
        return Err(err(
            "messages",
            "messages must be an array of {role, content} objects",
        ));
    };
    if items.is_empty() {
        return Err(err("messages", "messages must not be empty"));
    }
    if items.len() > MAX_MESSAGES {
        return Err(err(
            "messages",
            format!(
                "at most {MAX_MESSAGES} messages are accepted; got {}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |f: &str| format!("messages[{i}].{f}");
            let Value::Object(o) = m else {
                return Err(err(
                    format!("messages[{i}]"),
                    format!("messages[{i}] must be an object with 'role' and 'content'"),
                ));
            };
            if let Some(k) = o.keys().find(|k| *k != "role" && *k != "content") {
                return Err(err(
                    at(k),
                    format!(
                        "unknown field '{}'; a message has 'role' and 'content'",
                        at(k)
                    ),
                ));
            }
            let role = match o.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
                Some(Value::String(r)) => {
                    return Err(err(
                        at("role"),
                        format!(
                            "{} must be one of {}; got '{r}'",
                            at("role"),
                            ROLES.join(", ")
                        ),
                    ))
                }
                _ => return Err(err(at("role"), format!("{} must be a string", at("role")))),
            };
            let content = match o.get("content") {
                Some(Value::String(c)) => c.clone(),
                _ => {
                    return Err(err(
                        at("content"),
                        format!("{} must be a string", at("content")),
                    ))
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn opt_uint(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            err(
                field,
                format!("{field} must be a non-negative integer; got {n}"),
            )
        }),
        Some(_) => Err(err(
            field,
            format!("{field} must be a non-negative integer"),
        )),
    }
}

fn opt_num(
    obj: &Map<String, Value>,
    field: &str,
    default: f32,
    ok: impl Fn(f64) -> bool,
    limit: &str,
) -> Result<f32, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && ok(v) => Ok(v as f32),
            _ => Err(err(field, format!("{field} {limit}; got {n}"))),
        },
        Some(_) => Err(err(field, format!("{field} must be a number"))),
    }
}

/// OpenAI's presence/frequency penalty: 0 (off) unless given, within [-2, 2].
fn penalty(obj: &Map<String, Value>, field: &str) -> Result<f32, RequestError> {
    let ok = |v: f64| (-2.0..=2.0).contains(&v);
    opt_num(obj, field, 0.0, ok, "must be >= -2.0 and <= 2.0")
}

/// `{"<token id>": bias}` with biases in [-100, 100], as (id, bias) sorted by id. Whether the
/// ids are in the vocabulary is checked once the tokenizer is at hand (`generation::prepare`).
fn logit_bias(v: Option<&Value>) -> Result<Vec<(u32, f32)>, RequestError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(err(
                "logit_bias",
                "logit_bias must be an object of token id -> bias",
            ))
        }
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(err(
            "logit_bias",
            format!(
                "logit_bias has {} entries; the limit is {MAX_LOGIT_BIAS}",
                map.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (k, b) in map {
        let id = canonical_id(k).ok_or_else(|| {
            err(
                "logit_bias",
                format!(
                    "logit_bias keys must be token ids written in decimal without a sign or \
                     leading zeros (\"5\", \"0\"); got '{k}'"
                ),
            )
        })?;
        let bias = b.as_f64().filter(|b| (-100.0..=100.0).contains(b));
        let bias = bias.ok_or_else(|| {
            err(
                "logit_bias",
                format!("logit_bias[{k}] must be a number >= -100 and <= 100; got {b}"),
            )
        })?;
        out.push((id, bias as f32));
    }
    out.sort_by_key(|e| e.0);
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        let id = w[0].0;
        return Err(err(
            "logit_bias",
            format!("logit_bias gives token {id} twice"),
        ));
    }
    Ok(out)
}

/// A token id written the one way it prints (`"5"`, not `"+5"`, `"05"` or `" 5"`).
fn canonical_id(k: &str) -> Option<u32> {
    let id: u32 = k.parse().ok()?;
    (id.to_string() == k).then_some(id)
}

fn stop(v: Option<&Value>) -> Result<Vec<String>, RequestError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Value::String(s) => Ok(s.clone()),
                _ => Err(err(
                    format!("stop[{i}]"),
                    format!("stop[{i}] must be a string"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(err("stop", "stop must be a string or an array of strings")),
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(err(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings are accepted; got {}",
                list.len()
            ),
        ));
    }
    for (i, s) in list.iter().enumerate() {
        if s.is_empty() {
            return Err(err(
                format!("stop[{i}]"),
                format!("stop[{i}] must not be empty"),
            ));
        }
        if s.len() > MAX_STOP_BYTES {
            return Err(err(
                format!("stop[{i}]"),
                format!(
                    "stop[{i}] is {} bytes; the limit is {MAX_STOP_BYTES}",
                    s.len()
                ),
            ));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { ctx_size: 4096 };

    fn parse(s: &str) -> Result<ValidRequest, RequestError> {
        ValidRequest::parse(s.as_bytes(), L, 1)
    }

    #[test]
    fn json_that_serde_rejects_names_the_field_it_stopped_in() {
        let deep = format!(
            r#"{{"prompt":"a","stop":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let cases = [
            (
                r#"{"prompt":"a","temperature":1e400}"#.to_string(),
                "temperature",
            ),
            (r#"{"prompt":"a\ud800"}"#.to_string(), "prompt"),
            (r#"{"prompt":"a","top_p":NaN}"#.to_string(), "top_p"),
            (deep, "stop"),
            (r#"{"prompt":"a""#.to_string(), "body"),
            ("[1,2".to_string(), "body"),
        ];
        for (body, field) in cases {
            let e = parse(&body).unwrap_err();
            assert_eq!(e.field, field, "{body}: {}", e.message);
        }
    }

    #[test]
    fn defaults_and_fields() {
        let r = parse(r#"{"prompt":"hi","temperature":0,"stop":"x","seed":5}"#).unwrap();
        assert_eq!(r.input, Input::Prompt("hi".into()));
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.sampling.seed, 5);
        assert_eq!(r.stop, vec!["x".to_string()]);
        assert_eq!(r.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(r.sampling.presence_penalty, 0.0);
        assert!(r.sampling.logit_bias.is_empty());
        let r = parse(r#"{"prompt":"hi","presence_penalty":-2,"frequency_penalty":1.5,"logit_bias":{"7":-100,"3":2.5}}"#).unwrap();
        assert_eq!(r.sampling.presence_penalty, -2.0);
        assert_eq!(r.sampling.frequency_penalty, 1.5);
        assert_eq!(r.sampling.logit_bias, vec![(3, 2.5), (7, -100.0)]);
    }

    #[test]
    fn each_invalid_field_is_named() {
        let cases = [
            (r#"{"prompt":"a","bogus":1}"#, "bogus"),
            (r#"{"prompt":""}"#, "prompt"),
            (r#"{"prompt":3}"#, "prompt"),
            (r#"{}"#, "prompt"),
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"god","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"messages":[{"role":"user","content":1}]}"#,
                "messages[0].content",
            ),
            (r#"{"prompt":"a","max_tokens":0}"#, "max_tokens"),
            (r#"{"prompt":"a","max_tokens":5000}"#, "max_tokens"),
            (r#"{"prompt":"a","max_tokens":-1}"#, "max_tokens"),
            (r#"{"prompt":"a","temperature":-0.1}"#, "temperature"),
            (r#"{"prompt":"a","temperature":"hot"}"#, "temperature"),
            (r#"{"prompt":"a","top_p":0}"#, "top_p"),
            (r#"{"prompt":"a","top_p":1.5}"#, "top_p"),
            (
                r#"{"prompt":"a","stop":["a","b","c","d","e","f","g","h","i"]}"#,
                "stop",
            ),
            (r#"{"prompt":"a","stop":[""]}"#, "stop[0]"),
            (r#"{"prompt":"a","stream":"yes"}"#, "stream"),
            (
                r#"{"prompt":"a","presence_penalty":2.5}"#,
                "presence_penalty",
            ),
            (
                r#"{"prompt":"a","frequency_penalty":-3}"#,
                "frequency_penalty",
            ),
            (r#"{"prompt":"a","logit_bias":{"x":1}}"#, "logit_bias"),
            (r#"{"prompt":"a","logit_bias":{"+5":1}}"#, "logit_bias"),
            (r#"{"prompt":"a","logit_bias":{"05":1}}"#, "logit_bias"),
            (r#"{"prompt":"a","logit_bias":{" 5":1}}"#, "logit_bias"),
            (r#"{"prompt":"a","logit_bias":{"5":101}}"#, "logit_bias"),
            (r#"{"prompt":"a","logit_bias":{"5":"1"}}"#, "logit_bias"),
            (r#"{"prompt":"a","logit_bias":[1]}"#, "logit_bias"),
            (r#"[1]"#, "body"),
            (r#"{"prompt":"a""#, "body"),
        ];
        for (body, field) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
        let e = ValidRequest::parse(b"\xff\xfe", L, 0).unwrap_err();
        assert!(e.message.contains("UTF-8"));
    }

    #[test]
    fn context_overflow_states_both_numbers() {
        let mut r = parse(r#"{"prompt":"a","max_tokens":100}"#).unwrap();
        let e = r.fit_context(4000, L).unwrap_err();
        assert!(
            e.message.contains("4000") && e.message.contains("100") && e.message.contains("4096"),
            "{e}"
        );
        let mut r = parse(r#"{"prompt":"a"}"#).unwrap();
        r.fit_context(4000, L).unwrap();
        assert_eq!(r.max_tokens, 96);
    }
}
