//! Whole-model checks of `layerstream check-cuda`: a file loaded on the CPU backend and on the GPU,
//! the same prompts evaluated on both — last-position and decode-step logits compared, greedy
//! tokens compared with each other and, for golden prompts, with the reference's.

use std::path::Path;
use std::sync::Arc;

use super::check::Report;
use crate::backend::Session;
use crate::cli::CheckCudaArgs;
use crate::config::Device;
use crate::gguf::GgufFile;
use crate::loaded::{load_backend, Placement};
use crate::model::ModelSpec;
use crate::rng::Rng;
use crate::sampler::argmax;

/// Whole-model logits: F16 activations at the projection inputs and an F16 KV cache.
const TOL_MODEL: f64 = 3e-2;

/// Max-norm relative error of the GPU's logits against the CPU's. An error instead when they
/// cannot be compared: lengths that differ or are not the vocabulary's (an empty result would
/// otherwise score zero), or a non-finite value on either side (which `f64::max` would skip).
fn logits_err(gpu: &[f32], cpu: &[f32], vocab: usize) -> Result<f64, String> {
    if gpu.len() != cpu.len() || gpu.len() != vocab || vocab == 0 {
        return Err(format!(
            "logits lengths differ: GPU {}, CPU {} (vocabulary {vocab})",
            gpu.len(),
            cpu.len()
        ));
    }
    for (side, v) in [("GPU", gpu), ("CPU", cpu)] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("{side} logit {i} is {}", v[i]));
        }
    }
    let scale = cpu
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    Ok(gpu
        .iter()
        .zip(cpu)
        .map(|(g, w)| (*g as f64 - *w as f64).abs() / scale)
        .fold(0.0, f64::max))
}

struct Case {
    name: String,
    ids: Vec<u32>,
    golden: Option<Vec<u32>>,
}

fn cases(args: &CheckCudaArgs, file: &GgufFile, vocab: usize) -> Result<Vec<Case>, String> {
    let mut out = Vec::new();
    if let Some(g) = &args.golden {
        let text = std::fs::read_to_string(g).map_err(|e| format!("{}: {e}", g.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", g.display()))?;
        for p in v["prompts"].as_array().into_iter().flatten() {
            let ids = |k: &str| {
                p[k].as_array().map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect::<Vec<u32>>()
                })
            };
            out.push(Case {
                name: p["name"].as_str().unwrap_or("golden").to_string(),
                ids: ids("prompt_ids").unwrap_or_default(),
                golden: ids("greedy"),
            });
        }
    }
    if !args.prompt.is_empty() {
        let tok = crate::tokenizer::Tokenizer::from_metadata(file.metadata())
            .map_err(|e| e.to_string())?;
        let tmpl = crate::chat_template::ChatTemplate::from_metadata(file.metadata())
            .map_err(|e| e.to_string())?;
        for (i, text) in args.prompt.iter().enumerate() {
            let msgs = [crate::chat_template::ChatMessage::new(
                "user",
                text.as_str(),
            )];
            let ids = tok.encode_chat(&tmpl, &msgs).map_err(|e| e.to_string())?;
            out.push(Case {
                name: format!("prompt {i}"),
                ids,
                golden: None,
            });
        }
    }
    if out.is_empty() {
        let mut rng = Rng::new(7);
        let ids = (0..40)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect();
        out.push(Case {
            name: "random ids".into(),
            ids,
            golden: None,
        });
    }
    Ok(out)
}

/// Where greedy decoding stops: the golden file's stop ids (`stop_ids`, or the Qwen2 file's
/// `eos_ids`), else the model's end-of-turn tokens.
fn stop_ids(args: &CheckCudaArgs, file: &GgufFile) -> Vec<u32> {
    let golden = args.golden.as_ref().and_then(|g| {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(g).ok()?).ok()?;
        let ids = v.get("stop_ids").or_else(|| v.get("eos_ids"))?.as_array()?;
        Some(
            ids.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
        )
    });
    golden.unwrap_or_else(|| {
        crate::tokenizer::Tokenizer::from_metadata(file.metadata())
            .map(|t| t.eos_ids().to_vec())
            .unwrap_or_default()
    })
}

pub(super) fn check_model(path: &Path, args: &CheckCudaArgs, r: &mut Report) -> Result<(), String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = Arc::new(GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    let spec = ModelSpec::from_file(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    let ctx = spec.hp.context.min(1024);
    let cpu = load_backend(
        &file,
        &spec,
        Placement {
            device: Device::Cpu,
            gpu: 0,
            ctx,
        },
    )?;
    let gpu = load_backend(
        &file,
        &spec,
        Placement {
            device: Device::Cuda,
            gpu: args.gpu_device,
            ctx,
        },
    )?;
    let cases = cases(args, &file, spec.hp.vocab)?;
    let stops = stop_ids(args, &file);
    for case in &cases {
        let mut ce = cpu.clone().new_session(ctx).map_err(|e| e.to_string())?;
        let mut ge = gpu.clone().new_session(ctx).map_err(|e| e.to_string())?;
        let run = run_case(
            &mut *ce,
            &mut *ge,
            &case.ids,
            args.tokens,
            spec.hp.vocab,
            &stops,
        )?;
        report_case(&format!("{name} {}", case.name), case, &run, r);
    }
    let ids = cases.first().map(|c| c.ids.as_slice()).unwrap_or_default();
    check_decode_paths(&name, &gpu, ctx, ids, args.tokens, spec.hp.vocab, r)?;
    super::check_batch::check_batched(&name, &cpu, &gpu, ids, args.tokens, r)
}

/// The prompt then `tokens` decode steps (fed `feed`'s tokens, else its own greedy ones) on a
/// GPU session; every step's logits.
fn gpu_steps(
    gpu: &Arc<dyn crate::backend::Backend>,
    ctx: usize,
    ids: &[u32],
    tokens: usize,
    feed: Option<&[u32]>,
) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
    let mut s = gpu.clone().new_session(ctx).map_err(|e| e.to_string())?;
    let (mut steps, mut greedy) = (Vec::new(), Vec::new());
    let mut input = ids.to_vec();
    for i in 0..=tokens {
        let l = s.eval(&input).map_err(|e| e.to_string())?.to_vec();
        let next = feed.and_then(|f| f.get(i).copied()).unwrap_or(argmax(&l));
        greedy.push(argmax(&l));
        steps.push(l);
        input = vec![next];
    }
    Ok((steps, greedy))
}

/// The decode step's two GPU paths against each other: the fused kernels (where the family
/// allows them) and the separate ones, over the same tokens.
fn check_decode_paths(
    name: &str,
    gpu: &Arc<dyn crate::backend::Backend>,
    ctx: usize,
    ids: &[u32],
    tokens: usize,
    vocab: usize,
    r: &mut Report,
) -> Result<(), String> {
    let (fused, greedy) = gpu_steps(gpu, ctx, ids, tokens, None)?;
    super::res::force_separate_decode(true);
    let separate = gpu_steps(gpu, ctx, ids, tokens, Some(&greedy[..]));
    super::res::force_separate_decode(false);
    let (separate, sep_greedy) = separate?;
    let mut worst = 0f64;
    for (a, b) in fused.iter().zip(&separate).skip(1) {
        worst = worst.max(logits_err(a, b, vocab)?);
    }
    r.line(
        &format!("{name} fused vs separate decode"),
        format!(
            "{tokens} steps: logits within {worst:.2e} (limit {TOL_MODEL:.0e}); greedy identical: {}",
            greedy == sep_greedy
        ),
        worst <= TOL_MODEL,
    );
    Ok(())
}

/// One case evaluated on both backends.
struct Run {
    /// Max error of the prompt's logits, and the worst over the decode steps.
    prompt_err: f64,
    step_err: f64,
    /// The first logits that could not be compared (lengths, non-finite values), and where.
    bad: Option<String>,
    /// Greedy tokens of the CPU and of the GPU.
    cpu: Vec<u32>,
    gpu: Vec<u32>,
    /// The first differing greedy token: its index, the CPU's logit of its own token minus its
    /// logit of the GPU's, and the largest absolute logit difference between the backends at that
    /// step. A gap within twice that difference is a near-tie the measured error explains.
    diff: Option<(usize, f32, f32)>,
    /// Differing tokens whose gap the measured error does not explain.
    real_diffs: usize,
}

/// Evaluate `ids` on both sessions, then decode greedily until `tokens` tokens or one of `stops`.
fn run_case(
    ce: &mut dyn Session,
    ge: &mut dyn Session,
    ids: &[u32],
    tokens: usize,
    vocab: usize,
    stops: &[u32],
) -> Result<Run, String> {
    let mut run = Run {
        prompt_err: 0.0,
        step_err: 0.0,
        bad: None,
        cpu: Vec::new(),
        gpu: Vec::new(),
        diff: None,
        real_diffs: 0,
    };
    let mut input = ids.to_vec();
    loop {
        let cl = ce.eval(&input).map_err(|e| e.to_string())?;
        let gl = ge.eval(&input).map_err(|e| e.to_string())?;
        let at = run.cpu.len();
        match logits_err(gl, cl, vocab) {
            Ok(e) if at == 0 => run.prompt_err = e,
            Ok(e) => run.step_err = run.step_err.max(e),
            Err(e) if run.bad.is_none() => {
                let step = if at == 0 {
                    "prompt".to_string()
                } else {
                    format!("decode step {at}")
                };
                run.bad = Some(format!("{step}: {e}"));
            }
            Err(_) => {}
        }
        let (c, g) = (argmax(cl), argmax(gl));
        if c != g {
            let logit = |t: u32| cl.get(t as usize).copied().unwrap_or(f32::NAN);
            let gap = logit(c) - logit(g);
            let noise = gl
                .iter()
                .zip(cl)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            if gap.is_nan() || gap > 2.0 * noise {
                run.real_diffs += 1;
            }
            run.diff.get_or_insert((at, gap, noise));
        }
        run.cpu.push(c);
        run.gpu.push(g);
        if run.cpu.len() >= tokens.max(1) || stops.contains(&c) {
            return Ok(run);
        }
        // Both are fed the CPU's token: up to the first differing token that is each backend
        // feeding back its own, and after it the logits stay comparable.
        input = vec![c];
    }
}

fn report_case(label: &str, case: &Case, run: &Run, r: &mut Report) {
    let (pe, se) = (run.prompt_err, run.step_err);
    let errs = format!("prompt {pe:.2e}, decode steps {se:.2e} (limit {TOL_MODEL:.0e})");
    match &run.bad {
        Some(b) => r.line(&format!("{label} logits"), format!("{b}; {errs}"), false),
        None => r.line(
            &format!("{label} logits"),
            errs,
            pe <= TOL_MODEL && se <= TOL_MODEL,
        ),
    }
    let greedy = match run.diff {
        None => format!("{} tokens, identical to the CPU", run.cpu.len()),
        Some((i, gap, noise)) => format!(
            "token {i} of {} differs: CPU {}, GPU {} (CPU logits {gap:.2e} apart, backends differ by up to {noise:.2e} there); {} differing token(s) beyond twice the measured difference",
            run.cpu.len(),
            run.cpu[i],
            run.gpu[i],
            run.real_diffs
        ),
    };
    r.line(&format!("{label} greedy"), greedy, run.real_diffs == 0);
    if let Some(g) = &case.golden {
        let n = run.cpu.len().min(g.len());
        let ok = n > 0 && run.gpu[..n] == g[..n];
        r.line(
            &format!("{label} vs reference"),
            format!("first {n} greedy tokens identical to transformers: {ok}"),
            ok,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::logits_err;

    #[test]
    fn logits_that_cannot_be_compared_are_errors() {
        let cpu = [1.0f32, -2.0, 0.5];
        assert!(logits_err(&[], &[], 0).is_err());
        assert!(logits_err(&[], &cpu, 3)
            .unwrap_err()
            .contains("GPU 0, CPU 3"));
        assert!(logits_err(&cpu[..2], &cpu[..2], 3).is_err());
        assert!(logits_err(&[1.0, f32::NAN, 0.5], &cpu, 3).is_err());
        assert!(logits_err(&cpu, &[1.0, f32::INFINITY, 0.5], 3).is_err());
        assert!(logits_err(&cpu, &[f32::NAN, -2.0, 0.5], 3).is_err());
        assert_eq!(logits_err(&cpu, &cpu, 3), Ok(0.0));
        assert_eq!(logits_err(&[1.0, -2.0, 0.0], &cpu, 3), Ok(0.25));
    }
}
