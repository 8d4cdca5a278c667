//! Tool use on the request side: `tools` and `tool_choice` checked into the tool list the chat
//! template sees, and an assistant turn's `tool_calls` into what templates read. Tools keep the key
//! order the client wrote (`ordered`, the body parsed again into template values), as Python's
//! `json.dumps` in Hugging Face's templates would. `tool_choice` `"required"` or a named function
//! would need constrained decoding to be honoured, so they are refused.

use minijinja::Value as TValue;
use serde_json::{Map, Value};

use super::err;
use crate::chat_template::{FunctionCall, ToolCallTurn};
use crate::request::RequestError;

/// OpenAI's own limit on the number of tools.
pub const MAX_TOOLS: usize = 128;
const TOOL_KEYS: [&str; 2] = ["type", "function"];
const FUNCTION_KEYS: [&str; 4] = ["name", "description", "parameters", "strict"];

/// The body again, as template values with object keys in written order.
pub fn ordered(body: &[u8]) -> Result<TValue, RequestError> {
    serde_json::from_slice(body).map_err(|e| err("body", format!("request body: {e}")))
}

/// The tools the template is given: `None` without tools, with `tools: []`, or with
/// `tool_choice: "none"`.
pub fn tools(
    obj: &Map<String, Value>,
    ordered: &TValue,
) -> Result<Option<Vec<TValue>>, RequestError> {
    let list = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err("tools", "tools must be an array of function tools")),
    };
    if list.len() > MAX_TOOLS {
        let n = list.len();
        return Err(err(
            "tools",
            format!("at most {MAX_TOOLS} tools are accepted; got {n}"),
        ));
    }
    let mut names = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let name = check_tool(tool, i)?;
        if names.contains(&name) {
            let at = format!("tools[{i}].function.name");
            return Err(err(
                at,
                format!("the function name '{name}' is given twice"),
            ));
        }
        names.push(name);
    }
    if !choice_passes_tools(obj.get("tool_choice"))? || list.is_empty() {
        return Ok(None);
    }
    let tools = ordered
        .get_attr("tools")
        .and_then(|t| t.try_iter().map(Iterator::collect))
        .map_err(|e| err("tools", format!("tools: {e}")))?;
    Ok(Some(tools))
}

/// `tools[i]` is `{"type": "function", "function": {"name", "description"?, "parameters"?}}`.
fn check_tool(tool: &Value, i: usize) -> Result<&str, RequestError> {
    let at = |f: &str| format!("tools[{i}]{f}");
    let Value::Object(t) = tool else {
        return Err(err(at(""), format!("{} must be an object", at(""))));
    };
    if let Some(k) = t.keys().find(|k| !TOOL_KEYS.contains(&k.as_str())) {
        return Err(err(
            at(&format!(".{k}")),
            format!("unknown field '{k}' in a tool"),
        ));
    }
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(err(
            at(".type"),
            "only tools of type \"function\" are supported",
        ));
    }
    let Some(Value::Object(f)) = t.get("function") else {
        return Err(err(
            at(".function"),
            format!("{} must be an object", at(".function")),
        ));
    };
    if let Some(k) = f.keys().find(|k| !FUNCTION_KEYS.contains(&k.as_str())) {
        return Err(err(
            at(&format!(".function.{k}")),
            format!("unknown field '{k}' in a function"),
        ));
    }
    let name = match f.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.as_str(),
        _ => {
            let msg = "name must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'";
            return Err(err(at(".function.name"), msg));
        }
    };
    match f.get("description") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => {
            return Err(err(
                at(".function.description"),
                "description must be a string",
            ))
        }
    }
    match f.get("parameters") {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(_) => {
            return Err(err(
                at(".function.parameters"),
                "parameters must be a JSON Schema object",
            ))
        }
    }
    match f.get("strict") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(_) => {
            let msg = "strict: true needs constrained decoding, which this server does not do";
            return Err(err(at(".function.strict"), msg));
        }
    }
    Ok(name)
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether the tools reach the template: yes for `"auto"` (the default), no for `"none"`.
fn choice_passes_tools(choice: Option<&Value>) -> Result<bool, RequestError> {
    match choice {
        None | Some(Value::Null) => Ok(true),
        Some(Value::String(s)) if s == "auto" => Ok(true),
        Some(Value::String(s)) if s == "none" => Ok(false),
        Some(Value::String(s)) if s == "required" => Err(unenforceable("\"required\"")),
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Err(unenforceable("a named function"))
        }
        Some(_) => Err(err(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )),
    }
}

fn unenforceable(what: &str) -> RequestError {
    err(
        "tool_choice",
        format!("tool_choice {what} cannot be enforced: this server has no constrained decoding; use \"auto\" (the model decides) or \"none\""),
    )
}

/// `messages[i].tool_calls` of an assistant turn: `[{"id", "type": "function", "function":
/// {"name", "arguments"}}]`, the arguments a JSON string (or an object) read into a value.
pub fn message_tool_calls(
    calls: &Value,
    ordered: &TValue,
    i: usize,
) -> Result<Vec<ToolCallTurn>, RequestError> {
    let Value::Array(calls) = calls else {
        return Err(err(
            format!("messages[{i}].tool_calls"),
            "tool_calls must be an array",
        ));
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].tool_calls[{j}]{f}");
        let id = call.get("id").and_then(Value::as_str);
        let kind = call
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        let name = call.pointer("/function/name").and_then(Value::as_str);
        let (Some(id), "function", Some(name)) = (id, kind, name) else {
            let msg = "a tool call is {\"id\": string, \"type\": \"function\", \"function\": {\"name\": string, \"arguments\": string}}";
            return Err(err(at(""), msg));
        };
        let raw = arguments_at(ordered, i, j);
        let arguments = match raw.as_str() {
            Some(s) => serde_json::from_str::<TValue>(s).map_err(|e| {
                err(
                    at(".function.arguments"),
                    format!("arguments must be JSON text: {e}"),
                )
            })?,
            None if raw.is_undefined() || raw.is_none() => {
                TValue::from_pairs(Vec::<(TValue, TValue)>::new())
            }
            None => raw,
        };
        out.push(ToolCallTurn {
            id: id.to_owned(),
            kind: "function".to_owned(),
            function: FunctionCall {
                name: name.to_owned(),
                arguments,
            },
        });
    }
    Ok(out)
}

/// `messages[i].tool_calls[j].function.arguments` of the ordered body (undefined when absent).
fn arguments_at(ordered: &TValue, i: usize, j: usize) -> TValue {
    let keys = [
        TValue::from("messages"),
        TValue::from(i),
        TValue::from("tool_calls"),
        TValue::from(j),
        TValue::from("function"),
        TValue::from("arguments"),
    ];
    keys.iter().fold(ordered.clone(), |v, k| {
        v.get_item(k).unwrap_or(TValue::UNDEFINED)
    })
}

/// What a message adds for tool use: an assistant's `tool_calls`, a `tool` turn's `tool_call_id`.
pub fn message_extras(
    o: &Map<String, Value>,
    role: &str,
    ordered: &TValue,
    i: usize,
) -> Result<(Vec<ToolCallTurn>, Option<String>), RequestError> {
    let calls = match (o.get("tool_calls"), role) {
        (None | Some(Value::Null), _) => Vec::new(),
        (Some(c), "assistant") => message_tool_calls(c, ordered, i)?,
        (Some(_), _) => {
            let at = format!("messages[{i}].tool_calls");
            return Err(err(at, "only assistant messages carry tool_calls"));
        }
    };
    let id = match (o.get("tool_call_id"), role) {
        (Some(Value::String(id)), "tool") => Some(id.clone()),
        (_, "tool") => {
            let at = format!("messages[{i}].tool_call_id");
            return Err(err(at, "a tool message needs the tool_call_id it answers"));
        }
        (None | Some(Value::Null), _) => None,
        (Some(_), _) => {
            let at = format!("messages[{i}].tool_call_id");
            return Err(err(at, "only tool messages carry tool_call_id"));
        }
    };
    Ok((calls, id))
}

/// The function names of checked tools.
pub fn names(tools: &[TValue]) -> Vec<String> {
    let name = |t: &TValue| {
        let n = t.get_attr("function").ok()?.get_attr("name").ok()?;
        n.as_str().map(str::to_owned)
    };
    tools.iter().filter_map(name).collect()
}
