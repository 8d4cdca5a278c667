//! layerstream: an inference engine for Qwen2-family GGUF models.
//!
//! Module map:
//! - `gguf`: hardened zero-copy GGUF reader, typed metadata, writer.
//! - `quant`: dequantization of GGUF block formats; `convert`: quantized → F16 files.
//! - `model`: hyper-parameters, the tensor-name table, shape validation, random-model generator.
//! - `backend`: compute backends (`cpu` is the reference).
//! - `tokenizer`, `chat_template`: Qwen2 byte-level BPE and Jinja chat templates from GGUF metadata.
//! - `request`: the one request format (raw JSON → `ValidRequest`).
//! - `sampler`, `stop`, `generation`: sampling, stop strings, the generation loop.
//! - `loaded`: a model opened for use; `cli`: the command line.
pub mod backend;
pub mod chat_template;
pub mod cli;
pub mod convert;
pub mod generation;
pub mod gguf;
pub mod loaded;
pub mod logging;
pub mod model;
pub mod quant;
pub mod request;
pub mod rng;
pub mod sampler;
pub mod stop;
pub mod tokenizer;
