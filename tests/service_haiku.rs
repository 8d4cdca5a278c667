//! The anti-cheat haiku: the real model, streamed, asked for a haiku that must contain the current
//! UTC minute in English words, with a random nonce in the prompt and a seed from the clock, so no
//! canned answer can pass. The 0.5B model writes the word in about half of its attempts (22 of 41
//! recorded), so up to twelve seeds are tried (all twelve missing by chance: < 1 in 10,000); the
//! attempts made are printed, and every attempt's transcript is kept under
//! `target/test-artifacts/haiku/`.

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{Server, SseEvent};
use serde_json::json;

const ATTEMPTS: usize = 12;

/// 0 … 59 in English words, hyphenated ("forty-seven").
fn number_words(n: u64) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 4] = ["twenty", "thirty", "forty", "fifty"];
    assert!(n < 60, "{n} is not a minute");
    match (n, n % 10) {
        (0..=19, _) => ONES[n as usize].to_string(),
        (_, 0) => TENS[(n / 10 - 2) as usize].to_string(),
        (_, r) => format!("{}-{}", TENS[(n / 10 - 2) as usize], ONES[r as usize]),
    }
}

#[test]
fn minute_words_are_spelled_out_and_hyphenated() {
    let cases = [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (21, "twenty-one"),
        (47, "forty-seven"),
        (59, "fifty-nine"),
    ];
    for (n, w) in cases {
        assert_eq!(number_words(n), w);
    }
}

/// Random bits without a dependency: std's per-process random hash keys, mixed with the clock.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

fn nonce() -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = random_u64();
    (0..8)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ALNUM[((x >> 33) % ALNUM.len() as u64) as usize] as char
        })
        .collect()
}

fn transcript(
    path: &std::path::Path,
    body: &serde_json::Value,
    events: &[SseEvent],
    verdict: &str,
) {
    let mut t = format!("request: {body}\n\n");
    for e in events {
        let _ = writeln!(t, "event: {}\ndata: {}\n", e.event, e.data);
    }
    let text = events
        .last()
        .and_then(|e| e.data["text"].as_str())
        .unwrap_or("");
    let _ = write!(t, "text:\n{text}\n\nverdict: {verdict}\n");
    std::fs::write(path, t).unwrap();
}

/// Whether `word` stands in `text` as a whole word ("one" is not in "someone").
fn contains_word(text: &str, word: &str) -> bool {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .any(|w| w == word)
}

#[test]
fn the_minute_word_must_stand_as_a_whole_word() {
    assert!(contains_word("Forty-seven cores hum", "forty-seven"));
    assert!(contains_word("one GPU, one dream.", "one"));
    assert!(!contains_word("someone computes", "one"));
    assert!(!contains_word("twenty-one threads", "twenty"));
}

#[test]
fn streamed_haiku_contains_the_current_utc_minute_in_words() {
    let model = common::real_model_f16();
    let s = Server::spawn(&["--model", model.to_str().unwrap()], &[]);
    s.wait_ready(Duration::from_secs(30));
    let dir = harness::artifacts_dir().join("haiku");
    std::fs::create_dir_all(&dir).unwrap();
    let run = harness::unix_ms();
    let mut misses = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let word = number_words(now.as_secs() / 60 % 60);
        let prompt = format!(
            "Write a haiku about GPU computing that includes the word \"{word}\" (nonce: {})",
            nonce()
        );
        let seed = now.as_nanos() as u64;
        let body = json!({
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.7,
            "max_tokens": 100,
            "seed": seed,
            "stream": true
        });
        let mut sse = s.sse_post("/generate", &body, Duration::from_secs(120));
        assert_eq!(sse.status, 200);
        let events = sse.collect_all();
        let path = dir.join(format!("{run}-attempt-{attempt}.txt"));
        transcript(&path, &body, &events, "checking");
        let end = harness::assert_generation_stream(&events);
        assert!(events.iter().any(|e| e.event == "token"), "no token event");
        let text = end["text"].as_str().unwrap();
        assert!(
            !text.trim().is_empty(),
            "empty text; see {}",
            path.display()
        );
        let found = contains_word(text, &word);
        let verdict = if found {
            "contains the word"
        } else {
            "word missing"
        };
        transcript(&path, &body, &events, &format!("{verdict} \"{word}\""));
        if found {
            println!("haiku: the minute word appeared in attempt {attempt} of up to {ATTEMPTS}");
            return;
        }
        misses.push(format!("{}: {text:?}", path.display()));
    }
    panic!(
        "none of {ATTEMPTS} haiku contained the minute word:\n{}",
        misses.join("\n")
    );
}
