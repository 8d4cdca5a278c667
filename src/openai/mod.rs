//! OpenAI-compatible request bodies (`/v1/chat/completions`, `/v1/completions`) translated into
//! the one request format (`ValidRequest`), with OpenAI's defaults (temperature 1, no top-k,
//! top-p or min-p unless given). A parameter this server cannot honour is refused with a 400 that
//! names it, never ignored.

pub mod tool_calls;
pub mod tools;

use serde_json::{Map, Value};

use crate::chat_template::ToolCallTurn;
use crate::logprobs::MAX_TOP_LOGPROBS;
use crate::request::{Input, Limits, RequestError, ValidRequest};

/// Per message, what the plain `{role, content}` shape leaves out: tool calls and `tool_call_id`.
type Extras = Vec<(Vec<ToolCallTurn>, Option<String>)>;

/// Which route a body came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
}

/// A translated request and what only the OpenAI shape needs.
#[derive(Debug)]
pub struct OpenAiRequest {
    pub request: ValidRequest,
    pub model: Option<String>,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    /// Choices to generate (`n`), each its own sequence drawing with seed + its index.
    pub n: usize,
}

/// Most choices one request may ask for (`n`).
pub const MAX_N: u64 = 16;
/// Longest `model` and `user` strings accepted (characters). The served model's id is what
/// responses carry, never the client's text.
pub const MAX_NAME_CHARS: usize = 256;

/// Accepted and honoured (or accepted and without effect: `user`).
const COMMON: [&str; 19] = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_k",
    "min_p",
    "repetition_penalty",
    "response_format",
    "ignore_eos",
];
const CHAT_ONLY: [&str; 5] = [
    "messages",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "top_logprobs",
];
const COMPLETIONS_ONLY: [&str; 1] = ["prompt"];
/// Known but not supported yet: a 400 names them.
const UNSUPPORTED: [&str; 7] = [
    "parallel_tool_calls",
    "functions",
    "function_call",
    "audio",
    "modalities",
    "echo",
    "best_of",
];

pub(crate) fn err(field: impl Into<String>, message: impl Into<String>) -> RequestError {
    RequestError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parse and translate a body of `route`.
pub fn parse(
    body: &[u8],
    route: Route,
    limits: Limits,
    default_seed: u64,
) -> Result<OpenAiRequest, RequestError> {
    let obj = crate::request::parse_object(body)?;
    check_keys(&obj, route)?;
    check_values(&obj)?;
    let model = short_string(&obj, "model")?;
    short_string(&obj, "user")?;
    let mut ours = Map::new();
    let (mut extras, mut tools) = (Extras::new(), None);
    match route {
        Route::Chat => {
            let messages = obj
                .get("messages")
                .ok_or_else(|| err("messages", "messages is required"))?;
            let ordered = tools::ordered(body)?;
            tools = tools::tools(&obj, &ordered)?;
            let (plain, more) = chat_messages(messages, &ordered)?;
            ours.insert("messages".into(), plain);
            extras = more;
        }
        Route::Completions => {
            let prompt = obj
                .get("prompt")
                .ok_or_else(|| err("prompt", "prompt is required"))?;
            ours.insert("prompt".into(), completion_prompt(prompt)?);
        }
    }
    sampling_fields(&obj, &mut ours);
    let mut request = ValidRequest::from_object(&ours, limits, default_seed)?;
    if let Input::Messages(messages) = &mut request.input {
        for (m, (calls, id)) in messages.iter_mut().zip(extras) {
            m.tool_calls = calls;
            m.tool_call_id = id;
        }
    }
    request.tools = tools;
    request.logprobs = logprobs(&obj, route)?;
    Ok(OpenAiRequest {
        request,
        model,
        include_usage: obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        n: obj.get("n").and_then(Value::as_u64).unwrap_or(1) as usize,
    })
}

/// `max_tokens` (or `max_completion_tokens`), OpenAI's sampling defaults and the fields passed as
/// they are, into the request format's object.
fn sampling_fields(obj: &Map<String, Value>, ours: &mut Map<String, Value>) {
    let max = obj
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get("max_tokens").filter(|v| !v.is_null()));
    if let Some(m) = max {
        ours.insert("max_tokens".into(), m.clone());
    }
    // OpenAI's defaults: plain sampling at temperature 1 unless a field says otherwise.
    let defaults = [
        ("temperature", Value::from(1.0)),
        ("top_p", Value::from(1.0)),
        ("top_k", Value::from(0)),
        ("min_p", Value::from(0.0)),
    ];
    for (k, d) in defaults {
        let v = obj.get(k).filter(|v| !v.is_null()).cloned().unwrap_or(d);
        ours.insert(k.into(), v);
    }
    const PASSED: [&str; 8] = [
        "ignore_eos",
        "stop",
        "seed",
        "stream",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
    ];
    for k in PASSED {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            ours.insert(k.into(), v.clone());
        }
    }
}

/// An optional string field of at most `MAX_NAME_CHARS` characters.
fn short_string(obj: &Map<String, Value>, k: &str) -> Result<Option<String>, RequestError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= MAX_NAME_CHARS => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(err(
            k,
            format!(
                "{k} is {} characters long; the limit is {MAX_NAME_CHARS}",
                s.chars().count()
            ),
        )),
        Some(_) => Err(err(k, format!("{k} must be a string"))),
    }
}

/// How many alternatives to report per token, when log-probabilities are asked for: chat's
/// `logprobs: true` with `top_logprobs`, completions' `logprobs: <alternatives>`.
fn logprobs(obj: &Map<String, Value>, route: Route) -> Result<Option<usize>, RequestError> {
    let count = |k: &str, v: &Value| match v.as_u64() {
        Some(n) if n as usize <= MAX_TOP_LOGPROBS => Ok(n as usize),
        _ => Err(err(
            k,
            format!("{k} must be an integer >= 0 and <= {MAX_TOP_LOGPROBS}; got {v}"),
        )),
    };
    let given = |k: &str| obj.get(k).filter(|v| !v.is_null());
    match (route, given("logprobs")) {
        (Route::Completions, None) => Ok(None),
        (Route::Completions, Some(v)) => count("logprobs", v).map(Some),
        (Route::Chat, lp) => {
            let on = match lp {
                None | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(_) => return Err(err("logprobs", "logprobs must be a boolean")),
            };
            match given("top_logprobs") {
                None => Ok(on.then_some(0)),
                Some(_) if !on => Err(err("top_logprobs", "top_logprobs needs logprobs: true")),
                Some(v) => count("top_logprobs", v).map(Some),
            }
        }
    }
}

fn check_keys(obj: &Map<String, Value>, route: Route) -> Result<(), RequestError> {
    let own: &[&str] = match route {
        Route::Chat => &CHAT_ONLY,
        Route::Completions => &COMPLETIONS_ONLY,
    };
    for k in obj.keys() {
        let k = k.as_str();
        let null = obj.get(k).is_some_and(Value::is_null);
        if UNSUPPORTED.contains(&k) && !null && !is_off(obj, k) {
            return Err(err(k, format!("'{k}' is not supported by this server yet")));
        }
        if !COMMON.contains(&k) && !own.contains(&k) && !UNSUPPORTED.contains(&k) {
            return Err(err(k, format!("unknown parameter '{k}'")));
        }
    }
    Ok(())
}

/// Values of unsupported parameters that ask for nothing (`echo: false`).
fn is_off(obj: &Map<String, Value>, k: &str) -> bool {
    matches!(
        (k, obj.get(k)),
        ("echo", Some(Value::Bool(false))) | ("parallel_tool_calls", Some(Value::Bool(true)))
    ) || matches!((k, obj.get(k)), ("best_of", Some(v)) if v.as_u64() == Some(1))
}

/// Values this server accepts only in their neutral form.
fn check_values(obj: &Map<String, Value>) -> Result<(), RequestError> {
    if let Some(n) = obj.get("n").filter(|v| !v.is_null()) {
        if !n.as_u64().is_some_and(|n| (1..=MAX_N).contains(&n)) {
            return Err(err(
                "n",
                format!("n must be an integer >= 1 and <= {MAX_N}; got {n}"),
            ));
        }
    }
    if let Some(rf) = obj.get("response_format").filter(|v| !v.is_null()) {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(err(
                "response_format",
                "only response_format {\"type\": \"text\"} is supported",
            ));
        }
    }
    if let Some(so) = obj.get("stream_options").filter(|v| !v.is_null()) {
        let ok = so.as_object().is_some_and(|o| {
            o.iter()
                .all(|(k, v)| k == "include_usage" && v.is_boolean())
        });
        if !ok {
            return Err(err(
                "stream_options",
                "stream_options accepts only {\"include_usage\": bool}",
            ));
        }
    }
    Ok(())
}

/// Chat messages in our shape: content as one string (text parts joined), `developer` as
/// `system`, an assistant's null content as empty; tool calls and ids apart, in `Extras`.
fn chat_messages(v: &Value, ordered: &minijinja::Value) -> Result<(Value, Extras), RequestError> {
    let Value::Array(items) = v else {
        return Err(err("messages", "messages must be an array"));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut extras = Extras::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let Value::Object(o) = m else {
            return Err(err(
                format!("messages[{i}]"),
                "each message must be an object",
            ));
        };
        for k in o.keys() {
            if !["role", "content", "name", "tool_calls", "tool_call_id"].contains(&k.as_str()) {
                return Err(err(
                    at(k),
                    format!("'{}' is not supported in a message yet", at(k)),
                ));
            }
        }
        let role = match o.get("role").and_then(Value::as_str) {
            Some("developer") => "system",
            Some(r) => r,
            None => return Err(err(at("role"), "role must be a string")),
        };
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            Some(Value::Array(parts)) => text_parts(parts, &at("content"))?,
            _ => {
                return Err(err(
                    at("content"),
                    "content must be a string or an array of text parts",
                ))
            }
        };
        extras.push(tools::message_extras(o, role, ordered, i)?);
        out.push(serde_json::json!({"role": role, "content": content}));
    }
    Ok((Value::Array(out), extras))
}

fn text_parts(parts: &[Value], field: &str) -> Result<String, RequestError> {
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        match (p.get("type").and_then(Value::as_str), p.get("text")) {
            (Some("text"), Some(Value::String(t))) => text.push_str(t),
            _ => {
                return Err(err(
                    format!("{field}[{j}]"),
                    "only {\"type\": \"text\", \"text\": ...} parts are supported",
                ))
            }
        }
    }
    Ok(text)
}

/// A completion prompt: a string, or an array holding one string.
fn completion_prompt(v: &Value) -> Result<Value, RequestError> {
    match v {
        Value::String(_) => Ok(v.clone()),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => Ok(a[0].clone()),
        Value::Array(_) => Err(err("prompt", "prompt must be a string or an array of one string (batches of prompts are not supported)")),
        _ => Err(err("prompt", "prompt must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { ctx_size: 4096 };

    fn chat(body: &str) -> Result<OpenAiRequest, RequestError> {
        parse(body.as_bytes(), Route::Chat, L, 1)
    }

    #[test]
    fn openai_defaults_and_fields_translate() {
        let r = chat(r#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"user","content":"hi"}],"max_completion_tokens":5,"stream":true,"stream_options":{"include_usage":true},"user":"u","n":1}"#).unwrap();
        assert_eq!(r.request.max_tokens, 5);
        assert_eq!(r.request.sampling.temperature, 1.0);
        assert_eq!(r.request.sampling.top_k, 0);
        assert!(r.include_usage && r.request.stream);
        assert_eq!(r.model.as_deref(), Some("m"));
        let r = chat(r#"{"messages":[{"role":"user","content":"x"}],"presence_penalty":0.5,"frequency_penalty":-1,"logit_bias":{"12":-100}}"#).unwrap();
        let s = &r.request.sampling;
        assert_eq!((s.presence_penalty, s.frequency_penalty), (0.5, -1.0));
        assert_eq!(s.logit_bias, vec![(12, -100.0)]);
        assert_eq!(r.request.logprobs, None);
        let lp = |body: &str, route| {
            parse(body.as_bytes(), route, L, 1)
                .unwrap()
                .request
                .logprobs
        };
        let msgs = r#""messages":[{"role":"user","content":"x"}]"#;
        let chat_lp = format!(r#"{{{msgs},"logprobs":true,"top_logprobs":3}}"#);
        assert_eq!(lp(&chat_lp, Route::Chat), Some(3));
        assert_eq!(
            lp(&format!(r#"{{{msgs},"logprobs":true}}"#), Route::Chat),
            Some(0)
        );
        assert_eq!(
            lp(&format!(r#"{{{msgs},"logprobs":false}}"#), Route::Chat),
            None
        );
        assert_eq!(
            lp(r#"{"prompt":"x","logprobs":5}"#, Route::Completions),
            Some(5)
        );
        let e = parse(
            br#"{"prompt":"x","logprobs":true}"#,
            Route::Completions,
            L,
            1,
        );
        assert_eq!(e.unwrap_err().field, "logprobs");
    }

    #[test]
    fn what_cannot_be_honoured_is_named() {
        for (body, field) in [
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":17}"#,
                "n",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#, "n"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":1}"#,
                "logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                "tools[0].function",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a b"}}]}"#,
                "tools[0].function.name",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required"}"#,
                "tool_choice",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"f"}}}"#,
                "tool_choice",
            ),
            (
                r#"{"messages":[{"role":"tool","content":"x"}]}"#,
                "messages[0].tool_call_id",
            ),
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#,
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                "response_format",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"presence_penalty":2.5}"#,
                "presence_penalty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logit_bias":{"a":1}}"#,
                "logit_bias",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"bogus":1}"#,
                "bogus",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":-1}"#,
                "temperature",
            ),
        ] {
            assert_eq!(chat(body).unwrap_err().field, field, "{body}");
        }
    }

    #[test]
    fn echoed_names_are_bounded() {
        let long = "m".repeat(MAX_NAME_CHARS + 1);
        let ok = "é".repeat(MAX_NAME_CHARS);
        for k in ["model", "user"] {
            let body =
                format!(r#"{{"messages":[{{"role":"user","content":"x"}}],"{k}":"{long}"}}"#);
            let e = chat(&body).unwrap_err();
            assert_eq!(e.field, k);
            assert!(
                e.message.contains("257") && e.message.contains("256"),
                "{}",
                e.message
            );
            let body = format!(r#"{{"messages":[{{"role":"user","content":"x"}}],"{k}":"{ok}"}}"#);
            assert!(chat(&body).is_ok(), "{k}");
            let body = format!(r#"{{"messages":[{{"role":"user","content":"x"}}],"{k}":5}}"#);
            assert_eq!(chat(&body).unwrap_err().field, k);
        }
    }

    #[test]
    fn tools_and_tool_turns_reach_the_template_in_written_order() {
        let r = chat(r#"{"messages":[{"role":"user","content":"w?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\", \"days\": 1}"}}]},{"role":"tool","tool_call_id":"call_1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],"tool_choice":"auto","parallel_tool_calls":true}"#).unwrap();
        let tools = r.request.tools.unwrap();
        assert_eq!(
            serde_json::to_string(&tools[0]).unwrap(),
            r#"{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}"#
        );
        let Input::Messages(m) = r.request.input else {
            panic!("chat input")
        };
        let call = &m[1].tool_calls[0];
        assert_eq!(call.function.name, "get_weather");
        assert_eq!(
            serde_json::to_string(&call.function.arguments).unwrap(),
            r#"{"city":"Paris","days":1}"#
        );
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_1"));
    }

    #[test]
    fn tool_choice_none_keeps_tools_from_the_template() {
        let r = chat(r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"}"#).unwrap();
        assert!(r.request.tools.is_none());
    }
}
