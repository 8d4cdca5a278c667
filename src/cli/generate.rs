//! `layerstream generate`: one request through the same validation and loop as the service.

use std::io::Write;
use std::process::ExitCode;

use super::{fail, GenerateArgs};
use crate::generation::{generate, prepare, GenerationError};
use crate::loaded::{LoadedModel, Placement};
use crate::request::{clock_seed, Limits, ValidRequest};

/// Exit code for a request that failed validation.
const INVALID_REQUEST: u8 = 2;

pub fn run(a: GenerateArgs) -> ExitCode {
    let limits = Limits {
        ctx_size: a.ctx_size,
    };
    let mut req = match ValidRequest::parse(a.request.as_bytes(), limits, clock_seed()) {
        Ok(r) => r,
        Err(e) => return invalid(&e.field, &e.message),
    };
    let at = Placement {
        device: a.at.device,
        gpu: a.at.gpu_device,
        ctx: a.ctx_size,
    };
    let model = match LoadedModel::open_on(&a.model, at) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let ctx = a.ctx_size.min(model.spec.hp.context);
    let limits = Limits { ctx_size: ctx };
    let prompt = match prepare(&model.tokenizer, &model.template, &mut req, limits) {
        Ok(p) => p,
        Err(GenerationError::Request(e)) => return invalid(&e.field, &e.message),
        Err(e) => return fail(e),
    };
    let mut eval = match model.evaluator(ctx) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let mut out = std::io::stdout().lock();
    let stream = !a.json;
    let result = generate(&mut eval, &model.tokenizer, &prompt, &req, |ev| {
        if stream {
            let _ = out.write_all(ev.t.as_bytes());
            let _ = out.flush();
        }
        true
    });
    match result {
        Ok(g) if a.json => {
            let _ = writeln!(out, "{}", serde_json::to_string(&g).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(g) => {
            let _ = writeln!(out, "{}", g.tail);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn invalid(field: &str, message: &str) -> ExitCode {
    eprintln!("invalid request: {field}: {message}");
    ExitCode::from(INVALID_REQUEST)
}
