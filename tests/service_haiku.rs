//! The anti-cheat haiku: the real model, streamed, asked for a haiku that must contain the current
//! UTC minute in English words, with a random nonce in the prompt and a random seed, so no canned
//! answer can pass. Every attempt's transcript is kept under `target/test-artifacts/haiku/`.
//!
//! Why it cannot flake. How often the 0.5B model writes the word depends on the word, so the
//! odds were measured for every minute word with this test's prompt, sampling and check
//! (`scripts/haiku-odds --samples 64`, CPU backend, real F16 model, 2026-12-08; its output is
//! `tests/data/haiku-odds.json`): 3,325 of 3,840 answers hold the word; the worst word is
//! "nineteen", 32 of 64. Its exact (Clopper-Pearson) upper bound on the miss rate at 99.99 %
//! confidence is 0.7263, and every other word's is lower. Attempts are independent draws (each its
//! own nonce and seed), so 32 attempts all missing has probability at most 0.7263^32 = 3.6e-5 for
//! the worst minute (at the point estimate, 0.5^32 = 2.3e-10), below the 1 in 10,000 this test
//! promises. They run in two rounds of 16 at once (the CPU's default batch), the second only when
//! the first found nothing (probability <= 0.7263^16 = 0.006).
//!
//! The previous prompt ("... that includes the word ...", attempts one at a time, at most 12)
//! failed 26 % of the time at minute :10: the model wrote "ten" in 9 of 32 answers.

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{Server, SseEvent};
use serde_json::json;

/// Attempts run at once, and rounds at most: 32 attempts in all (see the module comment).
const PER_ROUND: usize = 16;
const ROUNDS: usize = 2;

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

/// Whether `word` stands in `text` as a whole word ("one" is not in "someone"); a compound may
/// be written hyphenated or spaced ("forty seven").
fn contains_word(text: &str, word: &str) -> bool {
    let lower = text.to_lowercase();
    // Punctuation separates phrases; within one, words are separated by whitespace.
    let phrases = lower.split(|c: char| !(c.is_alphanumeric() || c == '-' || c.is_whitespace()));
    phrases.into_iter().any(|p| {
        let words: Vec<&str> = p.split_whitespace().collect();
        words.contains(&word)
            || word
                .split_once('-')
                .is_some_and(|(a, b)| words.windows(2).any(|w| w[0] == a && w[1] == b))
    })
}

#[test]
fn the_minute_word_must_stand_as_a_whole_word() {
    assert!(contains_word("Forty-seven cores hum", "forty-seven"));
    assert!(contains_word("Forty seven cores hum", "forty-seven"));
    assert!(contains_word("one GPU, one dream.", "one"));
    assert!(!contains_word("someone computes", "one"));
    assert!(!contains_word("twenty-one threads", "twenty"));
    assert!(contains_word("Forty\n seven cores", "forty-seven"));
    assert!(!contains_word("forty, seven", "forty-seven"));
    assert!(!contains_word("forty-one seven", "forty-seven"));
}

/// One streamed attempt: its transcript is kept; returns the text and whether it holds the word.
fn attempt(s: &Server, word: &str, path: &std::path::Path) -> (String, bool) {
    let prompt = format!(
        "Write a haiku about GPU computing. Its first line must start with the word \"{word}\" \
         (written in letters, not digits). (nonce: {})",
        nonce()
    );
    let body = json!({
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.7,
        "max_tokens": 100,
        "seed": random_u64() >> 11,
        "stream": true
    });
    let mut sse = s.sse_post("/generate", &body, Duration::from_secs(300));
    assert_eq!(sse.status, 200);
    let events = sse.collect_all();
    transcript(path, &body, &events, "checking");
    let end = harness::assert_generation_stream(&events);
    assert!(events.iter().any(|e| e.event == "token"), "no token event");
    let text = end["text"].as_str().unwrap().to_string();
    assert!(
        !text.trim().is_empty(),
        "empty text; see {}",
        path.display()
    );
    let found = contains_word(&text, word);
    let verdict = if found {
        "contains the word"
    } else {
        "word missing"
    };
    transcript(path, &body, &events, &format!("{verdict} \"{word}\""));
    (text, found)
}

/// One round of `PER_ROUND` attempts at once (the engine batches them into the same steps):
/// each attempt's transcript path, text and verdict.
fn round(
    s: &Server,
    word: &str,
    run: u128,
    first: usize,
) -> Vec<(std::path::PathBuf, String, bool)> {
    let dir = harness::artifacts_dir().join("haiku");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (first..first + PER_ROUND)
            .map(|i| {
                let path = dir.join(format!("{run}-attempt-{i}.txt"));
                scope.spawn(move || {
                    let (text, found) = attempt(s, word, &path);
                    (path, text, found)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn streamed_haiku_contains_the_current_utc_minute_in_words() {
    let model = common::real_model_f16();
    let s = Server::spawn(&["--model", model.to_str().unwrap()], &[]);
    s.wait_ready(Duration::from_secs(30));
    std::fs::create_dir_all(harness::artifacts_dir().join("haiku")).unwrap();
    let run = harness::unix_ms();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let word = number_words(now.as_secs() / 60 % 60);
    let mut misses = Vec::new();
    for r in 0..ROUNDS {
        let results = round(&s, &word, run, 1 + r * PER_ROUND);
        let hits = results.iter().filter(|a| a.2).count();
        if hits > 0 {
            println!(
                "haiku: {hits} of round {}'s {PER_ROUND} attempts contain the minute word \"{word}\"",
                r + 1
            );
            return;
        }
        misses.extend(
            results
                .into_iter()
                .map(|(path, text, _)| format!("{}: {text:?}", path.display())),
        );
    }
    panic!(
        "none of {} haiku contained the minute word \"{word}\":\n{}",
        ROUNDS * PER_ROUND,
        misses.join("\n")
    );
}
