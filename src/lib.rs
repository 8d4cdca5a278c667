//! layerstream: an inference engine for Qwen2-family GGUF models.
//!
//! Module map:
//! - `gguf`: hardened zero-copy GGUF reader, typed metadata, writer.
//! - `quant`: dequantization of GGUF block formats; `convert`: quantized → F16 files.
//! - `model`: hyper-parameters, the tensor-name table, shape validation, random-model generator.
//! - `backend`: compute backends (`cpu` is the reference).
//! - `tokenizer`, `chat_template`: Qwen2 byte-level BPE and Jinja chat templates from GGUF metadata.
//! - `request`: the one request format (raw JSON → `ValidRequest`); `openai`: OpenAI-shaped
//!   bodies translated into it.
//! - `sampler`, `stop`, `generation`: sampling, stop strings, the generation loop; `logprobs`:
//!   the log-probabilities reported for generated tokens.
//! - `load`: the load plan, residency gate, progress, and the loader thread.
//! - `engine`: the thread that runs requests; `server`: HTTP; `serve`: startup that ties them.
//! - `metrics`: Prometheus counters, histograms and gauges (`GET /metrics`).
//! - `loaded`: a model opened for use; `cli`, `config`: the command line; `redact`: URLs with
//!   their credentials masked, for logs.
pub mod backend;
pub mod chat_template;
pub mod cli;
pub mod config;
pub mod convert;
pub mod engine;
pub mod generation;
pub mod gguf;
pub mod load;
pub mod loaded;
pub mod logging;
pub mod logprobs;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod panic_message;
pub mod quant;
pub mod redact;
pub mod request;
pub mod rng;
pub mod sampler;
pub mod serve;
pub mod server;
pub mod stop;
pub mod strftime;
pub mod tokenizer;
