//! The sampler never sees non-finite logits: NaN or +inf anywhere, or no finite value at all,
//! ends the sequence with `GenerationError::NonFinite` (the engine answers `non_finite_logits`)
//! instead of a panic or a meaningless token; finite logits sample as usual.

mod common;

use layerstream::generation::{Decoding, GenerationError};
use layerstream::gguf::GgufFile;
use layerstream::request::{Limits, ValidRequest};
use layerstream::tokenizer::Tokenizer;

/// Spoils a logits row.
type Poison = dyn Fn(&mut [f32]);

#[test]
fn non_finite_logits_end_the_sequence_with_an_error_not_a_panic() {
    let file = GgufFile::open(&common::vocab_gguf()).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let vocab = tok.vocab_size();
    let limits = Limits { ctx_size: 64 };
    for body in [
        r#"{"prompt":"hi","temperature":0}"#,
        r#"{"prompt":"hi","temperature":0.8,"seed":3}"#,
        r#"{"prompt":"hi","temperature":0.8,"top_k":0,"top_p":1,"min_p":0,"seed":3}"#,
    ] {
        let req = ValidRequest::parse(body.as_bytes(), limits, 1).unwrap();
        let nan = |l: &mut [f32]| l[7] = f32::NAN;
        let inf = |l: &mut [f32]| l[9] = f32::INFINITY;
        let none = |l: &mut [f32]| l.fill(f32::NEG_INFINITY);
        let cases: [(&str, &Poison); 3] = [("a NaN", &nan), ("+inf", &inf), ("all -inf", &none)];
        for (what, poison) in cases {
            let mut d = Decoding::new(&req, &[1, 2, 3]);
            let mut logits = vec![0.5f32; vocab];
            poison(&mut logits);
            match d.advance(&tok, &mut logits) {
                Err(GenerationError::NonFinite) => {}
                other => panic!("{body}, {what}: {other:?}"),
            }
        }
        let mut d = Decoding::new(&req, &[1, 2, 3]);
        let mut logits: Vec<f32> = (0..vocab).map(|i| (i % 97) as f32 / 10.0).collect();
        assert!(
            d.advance(&tok, &mut logits).is_ok(),
            "{body}: finite logits refused"
        );
    }
}
