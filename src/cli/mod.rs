//! The command line: one subcommand per file, every flag also settable from the environment as
//! `LAYERSTREAM_` + its name in capitals with `_` for `-` (`--kv-heads` is `LAYERSTREAM_KV_HEADS`);
//! positional arguments (`convert IN OUT`) are not.

mod bench;
mod bench_batch;
mod generate;
pub mod progress_bar;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::model::random::WeightDtype;

#[derive(Parser, Debug)]
#[command(
    name = "layerstream",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LAYERSTREAM_COMMIT"), ")"),
    about = "Qwen2 GGUF inference, ready as soon as layer 0 is resident"
)]
pub struct Cli {
    /// CPU threads for the compute backend (default: all cores).
    #[arg(long, env = "LAYERSTREAM_THREADS", global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API; ready as soon as the embeddings and layer 0 are resident.
    Serve(Box<crate::config::ServeArgs>),
    /// Run one request (the JSON body of POST /generate) and stream the text to stdout.
    Generate(GenerateArgs),
    /// Print the token ids of a text (raw-prompt semantics: special tokens are parsed) as JSON.
    Tokenize(TokenizeArgs),
    /// Dump a GGUF file's header, metadata and tensor index.
    Inspect {
        #[arg(long, env = "LAYERSTREAM_MODEL")]
        model: PathBuf,
    },
    /// Rewrite a (quantized) GGUF as F16 (2-D tensors) / F32 (1-D tensors).
    Convert(ConvertArgs),
    /// Write a random-weight Qwen2 model of any shape.
    GenModel(GenModelArgs),
    /// Measure prefill and decode speed.
    Bench(BenchArgs),
    /// Check every CUDA kernel against the CPU backend on random inputs (and whole models given
    /// with --model), and time the decode GEMV against cuBLAS.
    CheckCuda(CheckCudaArgs),
    /// Print, as JSON, whether this binary has CUDA support and which GPU `--device auto` would use.
    Devices {
        #[arg(long, env = "LAYERSTREAM_GPU_DEVICE", default_value_t = 0)]
        gpu_device: usize,
    },
}

/// Where a CLI command runs the model.
#[derive(Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// `auto` uses CUDA when a GPU is present, else the CPU.
    #[arg(long, env = "LAYERSTREAM_DEVICE", value_enum, default_value = "auto")]
    pub device: crate::config::Device,
    #[arg(long, env = "LAYERSTREAM_GPU_DEVICE", default_value_t = 0)]
    pub gpu_device: usize,
}

#[derive(Args, Debug)]
pub struct CheckCudaArgs {
    /// Whole-model checks on these files (logits and greedy tokens vs the CPU backend;
    /// device dequantization of every tensor vs the CPU's, bit for bit).
    #[arg(long, env = "LAYERSTREAM_MODEL")]
    pub model: Vec<PathBuf>,
    /// Chat prompts for the whole-model checks (in addition to those of --golden).
    #[arg(long, env = "LAYERSTREAM_PROMPT")]
    pub prompt: Vec<String>,
    /// Golden file of the real model (tests/golden/real-model.json): its prompt ids are checked,
    /// and the greedy tokens compared with the reference's too.
    #[arg(long, env = "LAYERSTREAM_GOLDEN")]
    pub golden: Option<PathBuf>,
    /// Greedy tokens compared per prompt.
    #[arg(long, env = "LAYERSTREAM_TOKENS", default_value_t = 16)]
    pub tokens: usize,
    #[arg(long, env = "LAYERSTREAM_GPU_DEVICE", default_value_t = 0)]
    pub gpu_device: usize,
    /// Seed of the random inputs (default: from the clock, printed).
    #[arg(long, env = "LAYERSTREAM_SEED")]
    pub seed: Option<u64>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[arg(long, env = "LAYERSTREAM_MODEL")]
    pub model: PathBuf,
    /// The request JSON, exactly as POST /generate accepts it.
    #[arg(long, env = "LAYERSTREAM_REQUEST")]
    pub request: String,
    /// Print the whole result as JSON instead of streaming text.
    #[arg(long, env = "LAYERSTREAM_JSON")]
    pub json: bool,
    #[arg(long, env = "LAYERSTREAM_CTX_SIZE", default_value_t = 4096)]
    pub ctx_size: usize,
    #[command(flatten)]
    pub at: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[arg(long, env = "LAYERSTREAM_MODEL")]
    pub model: PathBuf,
    #[arg(long, env = "LAYERSTREAM_TEXT")]
    pub text: String,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Output type (only f16 for now).
    #[arg(long, env = "LAYERSTREAM_TO", value_parser = ["f16"], default_value = "f16")]
    pub to: String,
    pub input: PathBuf,
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct GenModelArgs {
    /// The family (`general.architecture`) to write.
    #[arg(long, env = "LAYERSTREAM_ARCH", value_parser = ["qwen2", "llama", "qwen3", "gemma3"], default_value = "qwen2")]
    pub arch: String,
    #[arg(long, env = "LAYERSTREAM_LAYERS")]
    pub layers: usize,
    #[arg(long, env = "LAYERSTREAM_HIDDEN")]
    pub hidden: usize,
    #[arg(long, env = "LAYERSTREAM_HEADS")]
    pub heads: usize,
    #[arg(long, env = "LAYERSTREAM_KV_HEADS")]
    pub kv_heads: usize,
    #[arg(long, env = "LAYERSTREAM_FFN")]
    pub ffn: usize,
    /// Copy the tokenizer (and vocabulary size) from this GGUF file.
    #[arg(long, env = "LAYERSTREAM_VOCAB_FROM", conflicts_with = "vocab_size")]
    pub vocab_from: Option<PathBuf>,
    /// Vocabulary size when no tokenizer is copied.
    #[arg(long, env = "LAYERSTREAM_VOCAB_SIZE")]
    pub vocab_size: Option<usize>,
    /// Tie the LM head to the embeddings (no output.weight).
    #[arg(long, env = "LAYERSTREAM_TIED")]
    pub tied: bool,
    #[arg(long, env = "LAYERSTREAM_DTYPE", value_enum, default_value = "f16")]
    pub dtype: WeightDtype,
    #[arg(long, env = "LAYERSTREAM_SEED", default_value_t = 0)]
    pub seed: u64,
    #[arg(long, env = "LAYERSTREAM_CONTEXT", default_value_t = 4096)]
    pub context: usize,
    #[arg(long, env = "LAYERSTREAM_ROPE_BASE", default_value_t = 1_000_000.0)]
    pub rope_base: f32,
    /// Head dimension, written as `attention.key_length` (default: hidden / heads, not written).
    #[arg(long, env = "LAYERSTREAM_HEAD_DIM")]
    pub head_dim: Option<usize>,
    /// `attention.sliding_window` of a family with local layers (default: 512, at most the
    /// context).
    #[arg(long, env = "LAYERSTREAM_SLIDING_WINDOW")]
    pub sliding_window: Option<usize>,
    /// RoPE scaling: none, linear:FACTOR, llama3:FACTOR:LOW:HIGH:ORIGINAL_CONTEXT (Llama 3.1's,
    /// written as `rope_freqs.weight` like llama.cpp's converter does) or
    /// yarn:FACTOR:ORIGINAL_CONTEXT.
    #[arg(long, env = "LAYERSTREAM_ROPE_SCALING", default_value = "none")]
    pub rope_scaling: crate::model::random::RopeScalingSpec,
    #[arg(long, env = "LAYERSTREAM_OUT")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, env = "LAYERSTREAM_MODEL")]
    pub model: PathBuf,
    /// Prompt length for the prefill measurement.
    #[arg(long, env = "LAYERSTREAM_PROMPT_TOKENS", default_value_t = 64)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, env = "LAYERSTREAM_GEN_TOKENS", default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions (the median is reported).
    #[arg(long, env = "LAYERSTREAM_REPS", default_value_t = 3)]
    pub reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long, env = "LAYERSTREAM_JSON")]
    pub json: bool,
    /// Sequences run together through the engine's batched step (1: one sequence alone); the
    /// decode rate reported is the total over all of them.
    #[arg(long, env = "LAYERSTREAM_BATCH", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch: u32,
    /// Run the batched step with (true) or without (false) batch-invariant products, as
    /// `serve --batch-invariant` does; given, even `--batch 1` runs through the batched step.
    /// Without it, `--batch` above 1 runs without them.
    #[arg(long, env = "LAYERSTREAM_BATCH_INVARIANT", action = clap::ArgAction::Set)]
    pub batch_invariant: Option<bool>,
    #[command(flatten)]
    pub at: DeviceArgs,
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve(a) => a.log_format,
        _ => crate::config::LogFormat::Text,
    };
    crate::logging::init(format);
    if let Some(n) = cli.threads {
        crate::backend::cpu::pool::set_threads(n);
    }
    match cli.command {
        Command::Serve(a) => crate::serve::run(*a, started),
        Command::Generate(a) => generate::run(a),
        Command::Tokenize(a) => tools::tokenize(a),
        Command::Inspect { model } => tools::inspect(&model),
        Command::Convert(a) => tools::convert(a),
        Command::GenModel(a) => tools::gen_model(a),
        Command::Bench(a) if a.batch > 1 || a.batch_invariant.is_some() => bench_batch::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Devices { gpu_device } => {
            let j = match crate::backend::cuda::probe(gpu_device) {
                Ok(name) => {
                    serde_json::json!({"cuda": {"available": true, "gpu": gpu_device, "name": name}})
                }
                Err(e) => {
                    serde_json::json!({"cuda": {"available": false, "gpu": gpu_device, "error": e}})
                }
            };
            println!("{j}");
            ExitCode::SUCCESS
        }
        Command::CheckCuda(a) => match crate::backend::cuda::check::run(&a) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

/// Print an error and return exit code 1.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every `--flag` of every subcommand (and the global ones) against its variable's name.
    #[test]
    fn every_flag_is_read_from_its_layerstream_variable() {
        let cli = super::Cli::command();
        let mut checked = 0;
        for cmd in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let want = format!("LAYERSTREAM_{}", long.to_uppercase().replace('-', "_"));
                let got = arg.get_env().and_then(|e| e.to_str());
                assert_eq!(got, Some(want.as_str()), "{} --{long}", cmd.get_name());
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} flags seen");
    }

    /// `--batch-invariant` is off by default, on when given alone or told so.
    #[test]
    fn batch_invariance_is_off_unless_turned_on() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["layerstream", "serve", "--model", "m.gguf"];
            argv.extend_from_slice(extra);
            match super::Cli::try_parse_from(argv).expect("parses").command {
                super::Command::Serve(a) => a.batch_invariant,
                _ => unreachable!(),
            }
        };
        assert!(!parse(&[]));
        assert!(parse(&["--batch-invariant"]));
        assert!(parse(&["--batch-invariant", "--port", "1"]));
        assert!(parse(&["--batch-invariant", "true"]));
        assert!(!parse(&["--batch-invariant", "false"]));
        assert!(!parse(&["--batch-invariant=false"]));
    }
}
