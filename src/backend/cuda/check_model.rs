//! Whole-model checks of `layerstream check-cuda`: a file loaded on the CPU backend and on the GPU,
//! the same prompts evaluated on both — last-position and decode-step logits compared, greedy
//! tokens compared with each other and, for golden prompts, with the reference's.

use std::path::Path;
use std::sync::Arc;

use super::check::Report;
use crate::cli::CheckCudaArgs;
use crate::config::Device;
use crate::gguf::GgufFile;
use crate::loaded::{load_backend, Placement};
use crate::model::ModelSpec;
use crate::rng::Rng;
use crate::sampler::argmax;

/// Whole-model logits: F16 activations at the projection inputs and an F16 KV cache.
const TOL_MODEL: f64 = 3e-2;

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.is_finite() {
                (*g as f64 - *w as f64).abs() / scale
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max)
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

/// Stop ids of the golden model (Qwen2.5: `<|im_end|>`, `<|endoftext|>`).
const EOS: [u32; 2] = [151645, 151643];

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
    for case in cases(args, &file, spec.hp.vocab)? {
        let mut ce = cpu.clone().new_session(ctx).map_err(|e| e.to_string())?;
        let mut ge = gpu.clone().new_session(ctx).map_err(|e| e.to_string())?;
        let cl = ce.eval(&case.ids).map_err(|e| e.to_string())?.to_vec();
        let gl = ge.eval(&case.ids).map_err(|e| e.to_string())?.to_vec();
        let prompt_err = rel_err(&gl, &cl);
        let (mut ct, mut gt) = (vec![argmax(&cl)], vec![argmax(&gl)]);
        let mut step_err = 0f64;
        while ct.len() < args.tokens && !EOS.contains(ct.last().unwrap_or(&0)) {
            // Both are fed the CPU's token, so the logits stay comparable after a divergence.
            let next = *ct.last().unwrap_or(&0);
            let cl = ce.eval(&[next]).map_err(|e| e.to_string())?.to_vec();
            let gl = ge.eval(&[next]).map_err(|e| e.to_string())?.to_vec();
            step_err = step_err.max(rel_err(&gl, &cl));
            ct.push(argmax(&cl));
            gt.push(argmax(&gl));
        }
        let same = ct == gt;
        r.line(
            &format!("{name} {} logits", case.name),
            format!("prompt {prompt_err:.2e}, decode steps {step_err:.2e} (limit {TOL_MODEL:.0e})"),
            prompt_err <= TOL_MODEL && step_err <= TOL_MODEL,
        );
        // Random weights give near-ties that rounding may flip: tokens must match on golden prompts.
        r.line(
            &format!("{name} {} greedy", case.name),
            format!("{} tokens, identical to the CPU: {same}", ct.len()),
            same || case.golden.is_none(),
        );
        if let Some(g) = &case.golden {
            let n = ct.len().min(g.len());
            let ok = gt[..n] == g[..n];
            r.line(
                &format!("{name} {} vs reference", case.name),
                format!("first {n} greedy tokens identical to transformers: {ok}"),
                ok,
            );
        }
    }
    Ok(())
}
