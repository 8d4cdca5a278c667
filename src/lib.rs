//! layerstream: an inference engine for Qwen2-family GGUF models.
pub mod gguf;
