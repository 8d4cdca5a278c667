//! The families beside Qwen2 served over HTTP on 127.0.0.1 by the real binary, on the CPU: the
//! real SmolLM2 file (`llama`) becomes ready before its last layer (a request at READY answers as
//! one after the load), answers greedy chat requests with transformers' tokens, batches
//! identically and refuses tools its template cannot render (and serves them with Llama 3.1's
//! template, which renders them); the real Gemma 3 file
//! answers in its built-in instruct format with transformers' tokens; a random `llama` model's
//! layers are gated while it loads.

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{gen_model, Server};
use serde_json::{json, Value};

fn spawn(model: &std::path::Path, args: &[&str]) -> Server {
    let mut all = vec!["--model", model.to_str().unwrap(), "--device", "cpu"];
    all.extend_from_slice(args);
    let s = Server::spawn(&all, &[]);
    s.wait_ready(Duration::from_secs(60));
    s
}

/// Prompt `name` of `tests/golden/<file>` (transformers' ids and greedy tokens).
fn golden_prompt(file: &str, name: &str) -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no prompt {name} in the golden file"))
        .clone()
}

#[test]
fn smollm2_serves_transformers_greedy_tokens_and_batches_identically() {
    let s = spawn(&common::real_smollm2(), &[]);
    let models = s.get("/v1/models").json();
    assert_eq!(
        models["data"][0]["id"], "smollm2-135m-instruct-q4_1",
        "{models}"
    );
    // Five tokens of a prompt whose first steps are no near-ties in transformers' logits.
    let p = golden_prompt("family-smollm2.json", "chat-haiku");
    let want: Vec<u64> = p["greedy"].as_array().unwrap()[..5]
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let body = json!({"messages": p["messages"], "max_tokens": 5, "temperature": 0});
    let r = s.post_json("/generate", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(harness::token_ids(&r.json()), want, "{}", r.text());
    // Sampled answers are the same alone and among seven others (the CPU is batch-invariant).
    let sampled = json!({"messages": p["messages"], "max_tokens": 12, "temperature": 0.8,
        "seed": 7});
    let alone = harness::token_ids(&s.post_json("/generate", &sampled).json());
    let together: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (s, mut body) = (&s, sampled.clone());
                if i > 0 {
                    body["seed"] = json!(100 + i);
                }
                scope.spawn(move || harness::token_ids(&s.post_json("/generate", &body).json()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together[0], alone);
}

#[test]
fn smollm2_is_ready_before_its_last_layer_and_a_request_at_ready_matches_the_resident_answer() {
    // 50 MB/s: READY after the 28 MB embeddings and layer 0, fully resident about 1.4 s later.
    let s = spawn(&common::real_smollm2(), &["--load-bandwidth-limit", "50"]);
    let h = s.get("/health").json();
    assert!(
        h["units_resident"].as_u64().unwrap() < h["units_total"].as_u64().unwrap(),
        "fully resident at READY already: {h}"
    );
    let body = json!({"messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 8, "temperature": 0});
    let early = s.post_json("/generate", &body).json();
    assert!(
        early["timings"]["waited_for_load_ms"].as_f64().unwrap() > 0.0,
        "{early}"
    );
    s.wait_load_state("resident", Duration::from_secs(30));
    let late = s.post_json("/generate", &body).json();
    assert_eq!(harness::token_ids(&early), harness::token_ids(&late));
    assert_eq!(early["text"], late["text"]);
}

#[test]
fn smollm2_refuses_tools_its_template_cannot_render() {
    let s = spawn(&common::real_smollm2(), &[]);
    let body = json!({"messages": [{"role": "user", "content": "weather?"}], "tools": [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]});
    let r = s.post_json("/v1/chat/completions", &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "tools", "{}", r.text());
}

/// The SmolLM2 file carrying Llama 3.1's chat template instead of its own: the template renders
/// tools, so a request with them is served, the tools written into the prompt.
#[test]
fn a_llama_model_with_llama31_template_serves_tool_requests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let template =
        std::fs::read_to_string(root.join("tests/data/templates/llama-3.1-instruct.jinja"))
            .unwrap();
    let dir = std::env::temp_dir().join(format!("service-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let set = [(
        "tokenizer.chat_template",
        layerstream::gguf::Value::String(template),
    )];
    let model = common::rewrite::rewrite(
        &common::real_smollm2(),
        dir.join("smollm2-llama31-template.gguf"),
        &[],
        &set,
        &[],
    );
    let s = spawn(&model, &[]);
    let messages = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let plain = s.post_json(
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 2}),
    );
    assert_eq!(plain.status, 200, "{}", plain.text());
    let with_tools = s.post_json(
        "/v1/chat/completions",
        &json!({"messages": messages, "tools": tools, "max_tokens": 2}),
    );
    assert_eq!(with_tools.status, 200, "{}", with_tools.text());
    let prompt = |r: &harness::HttpResponse| r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    // The tool's JSON schema and the instructions around it: well over 50 tokens.
    assert!(
        prompt(&with_tools) > prompt(&plain) + 50,
        "{} vs {}",
        with_tools.text(),
        plain.text()
    );
}

#[test]
fn a_llama_model_is_ready_before_its_last_layer_and_answers_once_loaded() {
    let model = gen_model(
        "llama-gated",
        &[
            "--arch",
            "llama",
            "--layers",
            "8",
            "--hidden",
            "512",
            "--heads",
            "8",
            "--kv-heads",
            "4",
            "--ffn",
            "2048",
            "--tied",
        ],
    );
    // 100 MB/s: READY after the 78 MB embeddings and layer 0; each 7.9 MB layer then lands 80 ms
    // after the one before, so a request sent at READY waits about half a second for the rest.
    let s = spawn(&model, &["--load-bandwidth-limit", "100"]);
    let h = s.get("/health").json();
    assert!(
        h["units_resident"].as_u64().unwrap() < h["units_total"].as_u64().unwrap(),
        "fully resident at READY already: {h}"
    );
    let r = s.post_json(
        "/generate",
        &json!({"prompt": "hello", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(harness::token_ids(&v).len(), 4, "{v}");
    assert!(
        v["timings"]["waited_for_load_ms"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn gemma3_serves_its_instruct_format_with_transformers_tokens_and_bos_before_raw_prompts() {
    let s = spawn(&common::real_gemma3(), &[]);
    let p = golden_prompt("family-gemma3.json", "chat-haiku");
    // The first four greedy tokens of transformers' answer (no near-tie among them).
    let want: Vec<u64> = p["greedy"].as_array().unwrap()[..4]
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let body = json!({"messages": p["messages"], "max_tokens": 4, "temperature": 0});
    let r = s.post_json("/generate", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(harness::token_ids(&v), want, "{v}");
    assert_eq!(
        v["usage"]["prompt_tokens"],
        p["prompt_ids"].as_array().unwrap().len(),
        "{v}"
    );
    // A raw prompt gets BOS (the vocabulary adds it): one token more than its text.
    let raw = s.post_json("/generate", &json!({"prompt": "Hello", "max_tokens": 1}));
    assert_eq!(raw.json()["usage"]["prompt_tokens"], 2, "{}", raw.text());
}
