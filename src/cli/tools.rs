//! Small file tools: `tokenize`, `inspect`, `convert`, `gen-model` (the last two with a progress
//! bar on a terminal).

use std::path::Path;
use std::process::ExitCode;

use super::progress_bar::Bar;
use super::{fail, ConvertArgs, GenModelArgs, TokenizeArgs};
use crate::convert;
use crate::gguf::GgufFile;
use crate::model::random::{self, RandomModelSpec, VocabSource};
use crate::tokenizer::Tokenizer;

pub fn tokenize(a: TokenizeArgs) -> ExitCode {
    let file = match GgufFile::open(&a.model) {
        Ok(f) => f,
        Err(e) => return fail(format!("{}: {e}", a.model.display())),
    };
    let ids = Tokenizer::from_metadata(file.metadata())
        .map_err(|e| e.to_string())
        .and_then(|t| t.encode_prompt(&a.text).map_err(|e| e.to_string()));
    match ids {
        Ok(ids) => {
            println!("{}", serde_json::json!(ids));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn inspect(model: &Path) -> ExitCode {
    match GgufFile::open(model) {
        Ok(f) => {
            print!("{}", crate::gguf::inspect::describe(&f));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{}: {e}", model.display())),
    }
}

pub fn convert(a: ConvertArgs) -> ExitCode {
    let file = match GgufFile::open(&a.input) {
        Ok(f) => f,
        Err(e) => return fail(format!("{}: {e}", a.input.display())),
    };
    let converted = {
        let bar = Bar::bytes(convert::input_tensor_bytes(&file), "converting");
        convert::convert_to_f16_with(&file, &a.output, &mut |n| bar.inc(n))
    };
    match converted {
        Ok(r) => {
            eprintln!(
                "wrote {} ({} tensors, {} bytes)",
                a.output.display(),
                r.tensors,
                r.bytes_out
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn gen_model(a: GenModelArgs) -> ExitCode {
    let vocab = match (a.vocab_from, a.vocab_size) {
        (Some(p), _) => VocabSource::FromFile(p),
        (None, Some(n)) => VocabSource::Size(n),
        (None, None) => return fail("give --vocab-from FILE or --vocab-size N"),
    };
    let family = match crate::model::arch::Family::from_name(&a.arch) {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    let spec = RandomModelSpec {
        family,
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ffn: a.ffn,
        vocab,
        tied: a.tied,
        dtype: a.dtype,
        seed: a.seed,
        context: a.context,
        rope_base: a.rope_base,
        head_dim: a.head_dim,
        sliding_window: a.sliding_window,
        rope_scaling: a.rope_scaling,
    };
    let written = {
        let bar = Bar::count(random::units(&spec), "generating (units)");
        random::write_random_model_with(&spec, &a.out, &mut || bar.inc(1))
    };
    match written {
        Ok(hp) => {
            eprintln!(
                "wrote {} ({} layers, hidden {}, vocab {})",
                a.out.display(),
                hp.n_layer,
                hp.hidden,
                hp.vocab
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
