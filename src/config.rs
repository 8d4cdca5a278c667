//! `layerstream serve` configuration: clap derive, every flag also from `LAYERSTREAM_*`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::server::auth::ApiKey;
use crate::server::cors::CorsOrigin;
use crate::server::hosts::HostEntry;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// GGUF model file (default: the cached F16 test model, if `scripts/fetch-test-model` ran).
    #[arg(long, env = "LAYERSTREAM_MODEL")]
    pub model: Option<PathBuf>,
    #[arg(long, env = "LAYERSTREAM_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// 0 binds any free port; the bound address is printed as `listening on http://HOST:PORT`.
    #[arg(long, env = "LAYERSTREAM_PORT", default_value_t = 8080)]
    pub port: u16,
    #[arg(long, env = "LAYERSTREAM_DEVICE", value_enum, default_value = "auto")]
    pub device: Device,
    #[arg(long, env = "LAYERSTREAM_GPU_DEVICE", default_value_t = 0)]
    pub gpu_device: usize,
    /// The model's id in the OpenAI API (`/v1/models`, responses' `model`); default: the file
    /// name without `.gguf`.
    #[arg(long, env = "LAYERSTREAM_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Identifier reported in the load callbacks.
    #[arg(long, env = "LAYERSTREAM_WORKER_ID", default_value = "layerstream")]
    pub worker_id: String,
    /// The `uri` the load callbacks report (default: `http://` + the bound address; set it when
    /// binding 0.0.0.0 or behind NAT, where the bound address is not what callers use).
    #[arg(long, env = "LAYERSTREAM_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// POST the load events here, in order: `ready`, then `resident` or `failed` (JSON with
    /// `event`, `worker_id`, `uri`, `vram_bytes`, `ready_ms`); http only, anything else is refused
    /// at startup.
    #[arg(long, env = "LAYERSTREAM_CALLBACK_URL", value_parser = Quiet(http_url))]
    pub callback_url: Option<String>,
    /// Context size (positions per sequence, at least 1); capped at the model's trained context.
    #[arg(long, env = "LAYERSTREAM_CTX_SIZE", default_value_t = 4096, value_parser = positive_count)]
    pub ctx_size: usize,
    /// Requests that may wait for the engine; more get 429.
    #[arg(long, env = "LAYERSTREAM_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// Sequences decoded together in one step (continuous batching) [default: 16 on the CPU,
    /// 128 on a GPU].
    #[arg(long, env = "LAYERSTREAM_MAX_NUM_SEQS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_num_seqs: Option<u32>,
    /// Tokens one step may evaluate (decode tokens plus prompt chunks); a long prompt is computed
    /// in chunks of at most this many tokens.
    /// [default: 128 on the CPU, 512 on a GPU]
    #[arg(long, env = "LAYERSTREAM_MAX_BATCH_TOKENS", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_batch_tokens: Option<u32>,
    /// KV cache pool capacity in tokens, shared by every sequence (default: 1,024 per sequence,
    /// at least the context size). Reserved before READY.
    #[arg(long, env = "LAYERSTREAM_KV_CACHE_TOKENS", value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_cache_tokens: Option<u32>,
    /// Without --kv-cache-tokens, a GPU's KV pool fills this fraction of the device's memory
    /// (weights and everything else in use counted), up to what --max-num-seqs sequences of
    /// --ctx-size positions can hold. Reserved before READY.
    #[arg(long, env = "LAYERSTREAM_GPU_MEMORY_FRACTION", default_value_t = 0.9, value_parser = memory_fraction)]
    pub gpu_memory_fraction: f32,
    /// Make each sequence's results independent of what else shares its steps on a GPU (every
    /// product summed in an order fixed by its shape; the CPU always is). Off by default: it
    /// costs 13-17 % of throughput at 64 sequences and about 10 % for one client (measured, see
    /// docs/benchmarks.md), above the 10 % at 64 sequences it may cost to be on by default.
    #[arg(
        long,
        env = "LAYERSTREAM_BATCH_INVARIANT",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub batch_invariant: bool,
    /// Turn off prefix caching (full KV blocks shared between requests with the same prefix).
    #[arg(long, env = "LAYERSTREAM_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
    /// End a request still running this many seconds after it arrived, with what it has so far
    /// and `finish_reason: "time_limit"` (default: no limit).
    #[arg(long, env = "LAYERSTREAM_REQUEST_TIMEOUT", value_parser = positive_seconds)]
    pub request_timeout: Option<f64>,
    /// Open connections at most; more are answered 503 (`overloaded`) and closed.
    #[arg(long, env = "LAYERSTREAM_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Open connections one client address may hold at most (default: half of
    /// --max-connections), so one host cannot take every connection; more are answered 503
    /// (`overloaded`) and closed.
    #[arg(long, env = "LAYERSTREAM_MAX_CONNECTIONS_PER_PEER", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_peer: Option<u32>,
    /// Seconds a request's body may take to arrive (408 `body_timeout` after it).
    #[arg(long, env = "LAYERSTREAM_BODY_TIMEOUT", default_value_t = 30.0, value_parser = positive_seconds)]
    pub body_timeout: f64,
    /// Seconds a connection may take to send a whole request head (from its opening, or from
    /// the end of its previous exchange); then it is closed.
    #[arg(long, env = "LAYERSTREAM_HEAD_TIMEOUT", default_value_t = 10.0, value_parser = positive_seconds)]
    pub head_timeout: f64,
    /// Largest whole (not streamed) OpenAI answer, counted before generation at the most each
    /// token can take (`n` x `max_tokens` x the log-probability alternatives); a request that
    /// could exceed it gets a 400 naming those parameters. Streamed answers are not bounded.
    #[arg(long, env = "LAYERSTREAM_MAX_ANSWER_BYTES", default_value_t = crate::server::answer_size::DEFAULT_MAX_ANSWER_BYTES, value_parser = positive_count)]
    pub max_answer_bytes: usize,
    /// After a load failure, drain and exit with status 1 (so a supervisor restarts the worker);
    /// `false` keeps serving the failed state.
    #[arg(long, env = "LAYERSTREAM_EXIT_ON_LOAD_FAILURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub exit_on_load_failure: bool,
    /// Throttle the loader to this many MB/s (co-located services; tests).
    #[arg(long, env = "LAYERSTREAM_LOAD_BANDWIDTH_LIMIT", value_parser = positive_rate)]
    pub load_bandwidth_limit: Option<f64>,
    #[arg(
        long,
        env = "LAYERSTREAM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Require `Authorization: Bearer KEY` on the inference routes (`/generate`, `/v1/…`); the
    /// health routes and `/metrics` stay open. A command line is visible to every user of the
    /// machine: prefer the variable or --api-key-file.
    #[arg(long, env = "LAYERSTREAM_API_KEY", hide_env_values = true, value_name = "KEY",
          value_parser = Quiet(api_key), conflicts_with = "api_key_file")]
    pub api_key: Option<ApiKey>,
    /// Read the API key from this file (without its trailing newline).
    #[arg(long, env = "LAYERSTREAM_API_KEY_FILE", value_name = "PATH", value_parser = api_key_file)]
    pub api_key_file: Option<ApiKey>,
    /// Origins (`scheme://host[:port]`, or `*`) whose pages may call the API from a browser
    /// (CORS); comma-separated or repeated. Requests with any other `Origin` get 403 on the
    /// inference routes. Default: none.
    #[arg(long, env = "LAYERSTREAM_CORS_ALLOW_ORIGIN", value_name = "ORIGIN",
          value_delimiter = ',', value_parser = CorsOrigin::parse)]
    pub cors_allow_origin: Vec<CorsOrigin>,
    /// `Host` names answered (any port, unless one is given; `*`: all); others get 403.
    /// Comma-separated or repeated. Default: bound to a loopback address, `localhost`,
    /// `127.0.0.1`, `[::1]` and the bound address; bound elsewhere, every host.
    #[arg(long, env = "LAYERSTREAM_ALLOWED_HOSTS", value_name = "HOST",
          value_delimiter = ',', value_parser = HostEntry::parse)]
    pub allowed_hosts: Vec<HostEntry>,
}

/// The model `serve` uses when `--model` is not given.
pub fn default_model() -> PathBuf {
    let cache = std::env::var("LAYERSTREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            PathBuf::from(home).join(".cache/layerstream")
        });
    cache.join("models/qwen2.5-coder-0.5b-instruct-f16.gguf")
}

/// An `http://host[:port]/path` URL (the callback has no TLS support); errors show it with its
/// credentials masked.
fn http_url(s: &str) -> Result<String, String> {
    let shown = crate::redact::url(s);
    let uri: hyper::Uri = s
        .parse()
        .map_err(|e| format!("'{shown}' is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(s.to_string()),
        (Some("https"), _) => Err(format!(
            "'{shown}': https is not supported (no TLS in this build); use an http:// URL"
        )),
        _ => Err(format!("'{shown}' is not an http://host/... URL")),
    }
}

/// A value parser whose errors never quote the value (clap's own do): `parse` checks the text
/// and says what is wrong without repeating it (a key), or with its secrets masked (a URL).
#[derive(Clone, Copy)]
struct Quiet<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Quiet<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let refuse = |why: &str| {
            let flag = arg.map_or_else(String::new, |a| format!(" for '{a}'"));
            let msg = format!("invalid value{flag}: {why}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, msg).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refuse("not valid UTF-8"))?;
        (self.0)(text).map_err(|why| refuse(&why))
    }
}

/// `--api-key`, refused without showing it.
fn api_key(s: &str) -> Result<ApiKey, String> {
    ApiKey::parse(s).map_err(|why| format!("(the key is not shown) {why}"))
}

/// `--api-key-file`: the key it holds.
fn api_key_file(s: &str) -> Result<ApiKey, String> {
    ApiKey::from_file(std::path::Path::new(s))
}

/// A count >= 1.
fn positive_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a whole number >= 1")),
    }
}

/// A finite duration > 0 (seconds).
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a duration in seconds; expected a finite number > 0"
        )),
    }
}

/// A fraction in (0, 1].
fn memory_fraction(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a fraction of device memory; expected a number in (0, 1]"
        )),
    }
}

/// A finite rate > 0 (MB/s).
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a rate in MB/s; expected a finite number > 0"
        )),
    }
}

impl ServeArgs {
    /// `--max-connections-per-peer`, or half of `--max-connections` (at least one).
    pub fn connections_per_peer(&self) -> usize {
        let half = (self.max_connections as usize / 2).max(1);
        self.max_connections_per_peer.map_or(half, |n| n as usize)
    }

    /// The API key of --api-key or --api-key-file.
    pub fn api_key(&self) -> Option<ApiKey> {
        self.api_key.clone().or_else(|| self.api_key_file.clone())
    }

    /// The batching the engine asks of the backend, for a context of `ctx` positions, on a GPU
    /// or not (the defaults differ: a GPU step of 128 sequences costs about what one of 16 does).
    pub fn batch_request(&self, ctx: usize, gpu: bool) -> crate::backend::step::BatchRequest {
        let (seqs, tokens) = if gpu { (128, 512) } else { (16, 128) };
        let max_seqs = self.max_num_seqs.unwrap_or(seqs) as usize;
        let kv_tokens = self
            .kv_cache_tokens
            .map_or(max_seqs * 1024, |t| t as usize)
            .max(ctx);
        crate::backend::step::BatchRequest {
            max_seqs,
            max_batch_tokens: self.max_batch_tokens.unwrap_or(tokens) as usize,
            kv_tokens,
            block_size: crate::engine::BLOCK_SIZE,
            ctx,
            prefix_cache: !self.no_prefix_cache,
            batch_invariant: self.batch_invariant,
            gpu_memory_fraction: match self.kv_cache_tokens {
                Some(_) => None,
                None => Some(self.gpu_memory_fraction),
            },
        }
    }
}
