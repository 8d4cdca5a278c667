//! Chat templates rendered by minijinja against Hugging Face's `apply_chat_template` output
//! (tests/golden/tokenizer_chat.json, written by scripts/golden/tokenizer.py), plus the template
//! environment's guards: `raise_exception`, the fuel limit, Python's `tojson`, the ChatML fallback.

mod common;

use layerstream::chat_template::{ChatMessage, ChatTemplate, TemplateError, CHATML_TEMPLATE};
use layerstream::gguf::{Array, GgufFile, Metadata, Value as GgufValue};
use serde_json::Value;

fn golden() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tokenizer_chat.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn qwen_template() -> ChatTemplate {
    let file = GgufFile::open(&common::vocab_gguf()).unwrap();
    ChatTemplate::from_metadata(file.metadata()).unwrap()
}

#[test]
fn qwen_template_renders_byte_identical_to_hugging_face() {
    let t = qwen_template();
    for chat in golden()["chats"].as_array().unwrap() {
        let name = chat["name"].as_str().unwrap();
        let msgs: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            chat["rendered"].as_str().unwrap(),
            "{name}"
        );
        let without = chat["rendered_without_generation_prompt"].as_str().unwrap();
        assert_eq!(t.render(&msgs, false).unwrap(), without, "{name}");
    }
}

#[test]
fn qwen_template_with_tools_renders_byte_identical_to_hugging_face() {
    let t = qwen_template();
    for chat in golden()["tool_chats"].as_array().unwrap() {
        let vars = chat["variables"].as_str().unwrap();
        assert_eq!(
            t.render_json(vars).unwrap(),
            chat["rendered"].as_str().unwrap()
        );
    }
}

#[test]
fn golden_template_is_the_one_in_the_vocab_file() {
    let file = GgufFile::open(&common::vocab_gguf()).unwrap();
    let source = file.metadata().str("tokenizer.chat_template").unwrap();
    assert_eq!(source, golden()["chat_template"].as_str().unwrap());
}

#[test]
fn tojson_matches_python_json_dumps() {
    for case in golden()["tojson"].as_array().unwrap() {
        let source = case["template"].as_str().unwrap();
        let t = ChatTemplate::new(source, "", "").unwrap();
        let got = t.render_json(case["variables"].as_str().unwrap()).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap(), "{source}");
    }
}

#[test]
fn tojson_leaves_html_characters_and_non_ascii_unescaped() {
    let t = ChatTemplate::new("{{ messages|tojson }}", "", "").unwrap();
    let got = t
        .render_json(r#"{"messages": ["<a>&'", "日本😀"]}"#)
        .unwrap();
    assert_eq!(got, r#"["<a>&'", "日本😀"]"#);
}

#[test]
fn raise_exception_is_a_render_error_with_its_message() {
    let t = ChatTemplate::new(
        "{% if messages[0].role != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}",
        "",
        "",
    )
    .unwrap();
    let err = t
        .render(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    match err {
        TemplateError::Raised(msg) => assert_eq!(msg, "first message must be system"),
        other => panic!("expected Raised, got {other}"),
    }
    assert!(t.render(&[ChatMessage::new("system", "s")], true).is_ok());
}

#[test]
fn fuel_limit_stops_a_runaway_template() {
    let t = ChatTemplate::new(
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = t.render(&[], true).unwrap_err();
    assert!(matches!(err, TemplateError::OutOfFuel), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn invalid_template_is_a_compile_error() {
    let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    assert!(matches!(err, TemplateError::Compile(_)), "{err}");
}

#[test]
fn chatml_fallback_when_the_file_has_no_template() {
    let t = ChatTemplate::from_metadata(&Metadata::new()).unwrap();
    let msgs = [
        ChatMessage::new("system", "sys"),
        ChatMessage::new("user", "hi"),
    ];
    let want = "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(t.render(&msgs, true).unwrap(), want);
    assert_eq!(ChatTemplate::chatml().render(&msgs, true).unwrap(), want);
    assert!(CHATML_TEMPLATE.contains("add_generation_prompt"));
}

#[test]
fn bos_and_eos_tokens_come_from_the_vocabulary() {
    let mut meta = Metadata::new();
    let tokens = vec!["<s>".to_owned(), "</s>".to_owned(), "x".to_owned()];
    meta.insert(
        "tokenizer.ggml.tokens",
        GgufValue::Array(Array::String(tokens)),
    )
    .unwrap();
    meta.insert("tokenizer.ggml.bos_token_id", GgufValue::U32(0))
        .unwrap();
    meta.insert("tokenizer.ggml.eos_token_id", GgufValue::U32(1))
        .unwrap();
    meta.insert(
        "tokenizer.chat_template",
        GgufValue::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".to_owned()),
    )
    .unwrap();
    let t = ChatTemplate::from_metadata(&meta).unwrap();
    assert_eq!(
        t.render(&[ChatMessage::new("user", "hi")], false).unwrap(),
        "<s>hi</s>"
    );
}

/// Llama 3.1's and 3.2's templates (tests/data/templates) with tools, tool calls and tool results,
/// against transformers' renderer (tests/golden/templates.json, scripts/golden/templates.py).
#[test]
fn llama3_templates_render_as_transformers_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/golden/templates.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = doc["templates"].as_array().unwrap();
    assert!(cases.len() >= 10, "{} cases", cases.len());
    for case in cases {
        let file = case["template"].as_str().unwrap();
        let source = std::fs::read_to_string(root.join("tests/data/templates").join(file)).unwrap();
        let t = ChatTemplate::new(&source, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert!(t.renders_tools(), "{file}");
        let got = t.render_json(case["variables"].as_str().unwrap()).unwrap();
        let want = case["rendered"].as_str().unwrap();
        assert_eq!(got, want, "{file} {}", case["case"]);
    }
}

/// Llama 3.2's template dates its system message with `strftime_now` when it can, as transformers
/// and llama.cpp let it: today's date, not its fallback.
#[test]
fn strftime_now_gives_templates_todays_date() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source =
        std::fs::read_to_string(root.join("tests/data/templates/llama-3.2-instruct.jinja"))
            .unwrap();
    let t = ChatTemplate::new(&source, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let before = layerstream::strftime::strftime_now("%d %b %Y");
    let got = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    let after = layerstream::strftime::strftime_now("%d %b %Y");
    // Either side of a midnight the render may straddle.
    let dated = |d: &str| got.contains(&format!("Today Date: {d}\n"));
    assert!(dated(&before) || dated(&after), "{got}");
    assert!(!before.contains('%') && before.len() == 11, "{before}");
}
