//! `ignore_eos`: an end-of-sequence token ends a request unless the request asks to go on; then it
//! is counted, adds no text, and only `max_tokens` (or a stop string) ends the request.

mod common;

use layerstream::generation::{Decoding, FinishReason};
use layerstream::gguf::GgufFile;
use layerstream::request::{Limits, ValidRequest};
use layerstream::tokenizer::Tokenizer;

/// Greedy logits that pick `id`.
fn pick(vocab: usize, id: u32) -> Vec<f32> {
    let mut l = vec![0.0f32; vocab];
    l[id as usize] = 10.0;
    l
}

#[test]
fn eos_ends_a_request_unless_it_asks_to_ignore_it() {
    let file = GgufFile::open(&common::vocab_gguf()).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let (vocab, eos) = (tok.vocab_size(), tok.eos_ids()[0]);
    let limits = Limits { ctx_size: 64 };
    let plain = r#"{"prompt":"hi","temperature":0,"max_tokens":3}"#;
    let req = ValidRequest::parse(plain.as_bytes(), limits, 1).unwrap();
    assert!(!req.ignore_eos);
    let mut d = Decoding::new(&req, &[1, 2]);
    let a = d.advance(&tok, &mut pick(vocab, eos)).unwrap();
    assert!(a.event.is_none());
    assert_eq!(a.finish, Some(FinishReason::Stop));

    let body = r#"{"prompt":"hi","temperature":0,"max_tokens":3,"ignore_eos":true}"#;
    let req = ValidRequest::parse(body.as_bytes(), limits, 1).unwrap();
    let mut d = Decoding::new(&req, &[1, 2]);
    let hello = tok.encode_plain("Hello").unwrap()[0];
    let mut finishes = Vec::new();
    let mut text = String::new();
    for id in [eos, hello, eos] {
        let a = d.advance(&tok, &mut pick(vocab, id)).unwrap();
        let ev = a
            .event
            .expect("a token event for every token, EOS included");
        assert_eq!(ev.id, id);
        text.push_str(&ev.t);
        finishes.push(a.finish);
    }
    assert_eq!(finishes, [None, None, Some(FinishReason::Length)]);
    assert_eq!(text, "Hello");
    assert_eq!(d.generated(), [eos, hello, eos]);

    let bad = r#"{"prompt":"hi","ignore_eos":1}"#;
    let e = ValidRequest::parse(bad.as_bytes(), limits, 1).unwrap_err();
    assert_eq!(e.field, "ignore_eos");
}
