//! Chat templates: the Jinja template stored in GGUF metadata (`tokenizer.chat_template`), rendered
//! with minijinja configured like Hugging Face's `apply_chat_template` (trim/lstrip blocks, Python
//! string methods, `raise_exception`, a `tojson` that matches Python's `json.dumps`), with a fuel limit
//! so a hostile template cannot loop forever. Files without a template fall back to ChatML.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State};

use crate::gguf::{GgufError, Metadata};

/// Metadata key of the Jinja chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";
/// Instructions a single render may execute; a Qwen2.5 chat of a few turns needs a few thousand.
pub const RENDER_FUEL: u64 = 5_000_000;
/// Hugging Face's default ChatML template, used when the file carries none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
/// Gemma 3's instruct format (its official template's output), for Gemma 3 files that carry no
/// template: BOS, a turn per message with `assistant` called `model`, a system message folded
/// into the first turn (then a blank line), contents stripped, then the open model turn.
pub const GEMMA3_TEMPLATE: &str = "{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}\
{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
{{- bos_token -}}\
{%- for m in turns -%}\
{{- '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' -}}\
{{- (prefix if loop.first else '') + (m['content'] | trim) + '<end_of_turn>\n' -}}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}";

const TEMPLATE_NAME: &str = "chat";
/// Marks errors raised by the template itself so they can be told apart from engine errors.
const RAISED_PREFIX: &str = "template raised: ";
/// Nesting beyond this in `tojson` is refused rather than risking the stack.
const JSON_MAX_DEPTH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("metadata key '{key}': {source}")]
    Metadata {
        key: &'static str,
        #[source]
        source: GgufError,
    },
    #[error("chat template does not compile: {0}")]
    Compile(String),
    /// The template called `raise_exception(message)` (e.g. roles that do not alternate).
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    #[error("chat template variables are not usable: {0}")]
    Variables(String),
    #[error("chat template exceeded its budget of {RENDER_FUEL} instructions")]
    OutOfFuel,
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// One chat turn as the template sees it (`message['role']`, `message['content']`, and for tool use
/// `message.tool_calls` on an assistant turn and `message.tool_call_id` on a `tool` turn). The tool
/// fields are left out of the template's view when empty, so plain chats render as before.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallTurn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A call an assistant turn made, as templates read it (`tool_call.function.name`,
/// `tool_call.function.arguments | tojson`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq)]
pub struct ToolCallTurn {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// `arguments` is a JSON value (an object for well-formed calls) with its keys in written order.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: Value,
}

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the template reads `tools` (else tools given to it would silently vanish).
    renders_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The file's template, or (when it has none) its family's instruct format (Gemma 3's), else
    /// ChatML; `bos_token`/`eos_token` come from the vocabulary.
    pub fn from_metadata(meta: &Metadata) -> Result<ChatTemplate, TemplateError> {
        let source = meta
            .opt_str(CHAT_TEMPLATE_KEY)
            .map_err(|source| TemplateError::Metadata {
                key: CHAT_TEMPLATE_KEY,
                source,
            })?;
        let bos = token_string(meta, "tokenizer.ggml.bos_token_id")?;
        let eos = token_string(meta, "tokenizer.ggml.eos_token_id")?;
        // A file without a template gets its family's instruct format, else ChatML.
        let family = meta.opt_str("general.architecture").ok().flatten();
        let fallback = match family {
            Some("gemma3") => GEMMA3_TEMPLATE,
            _ => CHATML_TEMPLATE,
        };
        ChatTemplate::new(source.unwrap_or(fallback), &bos, &eos)
    }

    /// Hugging Face's default ChatML template.
    pub fn chatml() -> ChatTemplate {
        match ChatTemplate::new(CHATML_TEMPLATE, "", "") {
            Ok(template) => template,
            // The constant is a known-good template; reaching this is a build defect.
            Err(err) => unreachable!("built-in ChatML template does not compile: {err}"),
        }
    }

    /// Compiles `source`, failing with the parser's message when it is not valid Jinja.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: String| {
            crate::strftime::strftime_now(&format)
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TemplateError::Compile(describe(&e)))?;
        let renders_tools = env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .unwrap_or(false);
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            renders_tools,
        })
    }

    /// Whether the template writes function tools into the prompt (a model whose template does
    /// not was not trained to call them: requests with tools are refused for it).
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// `render` with the function tools the model may call (`tools` in the template, each an
    /// OpenAI `{"type": "function", "function": {...}}` object); `None` leaves `tools` undefined.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        let base = context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let ctx = match tools {
            Some(tools) => context! { tools => Value::from(tools.to_vec()), ..base },
            None => base,
        };
        template.render(ctx).map_err(|e| classify(&e))
    }

    /// Renders with arbitrary variables given as a JSON object (`messages` with tool calls, `tools`,
    /// `add_generation_prompt`, ...); `bos_token`/`eos_token` are supplied unless `vars` sets them.
    /// Taking JSON text keeps object keys in their written order, as Python dicts do for `tojson`.
    pub fn render_json(&self, vars: &str) -> Result<String, TemplateError> {
        let vars: Value =
            serde_json::from_str(vars).map_err(|e| TemplateError::Variables(e.to_string()))?;
        if vars.kind() != ValueKind::Map {
            return Err(TemplateError::Variables(format!(
                "expected a JSON object, got {}",
                vars.kind()
            )));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        let tokens = context! {
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        // Later contexts fill only what earlier ones lack, so `vars` wins.
        let ctx = context! { ..vars, ..tokens };
        template.render(ctx).map_err(|e| classify(&e))
    }
}

/// The text of the token whose id is stored at `key`, or "" when the key is absent.
fn token_string(meta: &Metadata, key: &'static str) -> Result<String, TemplateError> {
    let wrap = |source| TemplateError::Metadata { key, source };
    let Some(id) = meta.opt_u64(key).map_err(wrap)? else {
        return Ok(String::new());
    };
    let tokens = meta
        .strings(crate::tokenizer::TOKENS_KEY)
        .map_err(|source| TemplateError::Metadata {
            key: crate::tokenizer::TOKENS_KEY,
            source,
        })?;
    Ok(usize::try_from(id)
        .ok()
        .and_then(|i| tokens.get(i))
        .cloned()
        .unwrap_or_default())
}

/// Maps a render error to what the caller can act on: a template-raised message, fuel, or other.
fn classify(err: &Error) -> TemplateError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(mj) = e.downcast_ref::<Error>() {
            if mj.kind() == ErrorKind::OutOfFuel {
                return TemplateError::OutOfFuel;
            }
            if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED_PREFIX)) {
                return TemplateError::Raised(msg.to_owned());
            }
        }
        cur = e.source();
    }
    TemplateError::Render(describe(err))
}

/// The error with its line, which minijinja keeps out of `Display`.
fn describe(err: &Error) -> String {
    match err.line() {
        Some(line) => format!("{err} (line {line})"),
        None => err.to_string(),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED_PREFIX}{message}"),
    ))
}

/// Python's `json.dumps` options as Hugging Face exposes them through its `tojson` filter:
/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn tojson(
    state: &State,
    value: &Value,
    ensure_ascii: Option<bool>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let ensure_ascii = match ensure_ascii {
        Some(b) => b,
        None => kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    // Python: an int indents by that many spaces, a string by itself, None keeps one line.
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => Some(" ".repeat(usize::try_from(v.as_i64().unwrap_or(0)).unwrap_or(0))),
        },
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson separators must be a pair (item_separator, key_separator)",
            ))
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOptions {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    state.consume_fuel((out.len() / 64) as u64)?;
    Ok(Value::from_safe_string(out))
}

fn json_error(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {what}"))
}

fn write_json(out: &mut String, v: &Value, opts: &JsonOptions, level: usize) -> Result<(), Error> {
    if level > JSON_MAX_DEPTH {
        return Err(json_error(format!("nesting deeper than {JSON_MAX_DEPTH}")));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v)?,
        ValueKind::String => write_string(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, ('[', ']'), &items, opts, level, |out, item, lvl| {
                write_json(out, item, opts, lvl)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                ('{', '}'),
                &entries,
                opts,
                level,
                |out, (k, item), lvl| {
                    write_string(out, k, opts.ensure_ascii);
                    out.push_str(&opts.key_sep);
                    write_json(out, item, opts, lvl)
                },
            )?;
        }
        other => {
            return Err(json_error(format!(
                "a value of kind {other} is not JSON serializable"
            )))
        }
    }
    Ok(())
}

/// Writes `[a, b]` / `{..}` with Python's separators and, when indenting, one item per line.
fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    items: &[T],
    opts: &JsonOptions,
    level: usize,
    mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        if let Some(indent) = &opts.indent {
            out.push('\n');
            out.push_str(&indent.repeat(level + 1));
        }
        write_item(out, item, level + 1)?;
    }
    if let Some(indent) = &opts.indent {
        out.push('\n');
        out.push_str(&indent.repeat(level));
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings: `True` → "true", `None` → "null", numbers by repr.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key)?;
            Ok(s)
        }
        other => Err(json_error(format!(
            "keys must be str, int, float, bool or None, not {other}"
        ))),
    }
}

fn write_number(out: &mut String, v: &Value) -> Result<(), Error> {
    if v.is_integer() {
        out.push_str(&v.to_string());
    } else {
        let x = f64::try_from(v.clone()).map_err(|_| json_error("number out of range"))?;
        out.push_str(&py_float_repr(x));
    }
    Ok(())
}

/// Python's `repr(float)` as `json.dumps` writes it (`1e+16`, `1.5e-05`, `0.0001`, `NaN`).
pub(crate) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits, the same digits Python's repr picks.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.unsigned_abs());
    }
    if exp < 0 {
        let zeros = "0".repeat(exp.unsigned_abs() as usize - 1);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        let zeros = "0".repeat(int_len - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at(int_len);
        format!("{sign}{int}.{frac}")
    }
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`-style escapes, `\u00XX` for other controls,
/// and with `ensure_ascii` every non-ASCII character as `\uXXXX` (surrogate pairs above the BMP).
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (2.5e-300, "2.5e-300"),
            (1234.5678, "1234.5678"),
            (f64::NAN, "NaN"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn templates_that_read_tools_are_told_apart() {
        assert!(!ChatTemplate::chatml().renders_tools());
        let with = "{% if tools %}{{ tools | length }}{% endif %}{{ messages[0].content }}";
        assert!(ChatTemplate::new(with, "", "").unwrap().renders_tools());
    }

    #[test]
    fn chatml_renders_generation_prompt() {
        let t = ChatTemplate::chatml();
        let out = t.render(&[ChatMessage::new("user", "hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
