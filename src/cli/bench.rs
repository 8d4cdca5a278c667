//! `layerstream bench`: prefill and decode throughput on a model, median of several repetitions.

use std::process::ExitCode;
use std::time::Instant;

use super::{fail, BenchArgs};
use crate::generation::Evaluator;
use crate::loaded::{LoadedModel, Placement};
use crate::rng::Rng;
use crate::sampler::argmax;

pub fn run(a: BenchArgs) -> ExitCode {
    let t0 = Instant::now();
    let ctx = a.prompt_tokens + a.gen_tokens + 1;
    let at = Placement {
        device: a.at.device,
        gpu: a.at.gpu_device,
        ctx,
    };
    let model = match LoadedModel::open_on(&a.model, at) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let vocab = model.spec.hp.vocab.min(100_000) as u64;
    let mut rng = Rng::new(42);
    let prompt: Vec<u32> = (0..a.prompt_tokens.max(1))
        .map(|_| (rng.next_u64() % vocab) as u32)
        .collect();
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..a.reps.max(1) + 1 {
        let mut eval = match model.evaluator(ctx) {
            Ok(e) => e,
            Err(e) => return fail(e),
        };
        let t = Instant::now();
        let mut next = match eval.eval(&prompt) {
            Ok(l) => argmax(l),
            Err(e) => return fail(e),
        };
        prefill.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..a.gen_tokens {
            next = match eval.eval(&[next]) {
                Ok(l) => argmax(l),
                Err(e) => return fail(e),
            };
        }
        decode.push(a.gen_tokens as f64 / t.elapsed().as_secs_f64());
    }
    // The first repetition warms caches and the thread pool.
    let (pp, tg) = (median(&prefill[1..]), median(&decode[1..]));
    let threads = crate::backend::cpu::pool::threads();
    let device = model.backend.name();
    if a.json {
        let j = serde_json::json!({"commit": env!("LAYERSTREAM_COMMIT"), "model": a.model, "device": device, "threads": threads, "load_ms": load_ms,
            "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "prefill_tok_per_s": pp, "decode_tok_per_s": tg});
        println!("{j}");
    } else {
        println!("model       {}", a.model.display());
        println!("device      {device}");
        println!("threads     {threads}");
        println!("load        {load_ms:.0} ms");
        println!(
            "prefill     {pp:.1} tok/s  ({} tokens, median of {})",
            a.prompt_tokens, a.reps
        );
        println!(
            "decode      {tg:.1} tok/s  ({} tokens, median of {})",
            a.gen_tokens, a.reps
        );
    }
    ExitCode::SUCCESS
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}
