//! A model opened for use: file validated, tokenizer and chat template built, weights resident on
//! the CPU backend. What the CLI commands share.

use std::path::Path;

use crate::backend::cpu::{CpuModel, CpuSession, DEFAULT_MAX_BATCH};
use crate::backend::BackendError;
use crate::chat_template::ChatTemplate;
use crate::generation::Evaluator;
use crate::gguf::GgufFile;
use crate::model::ModelSpec;
use crate::tokenizer::Tokenizer;

/// Why a model could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Gguf {
        path: String,
        source: crate::gguf::GgufError,
    },
    #[error("{path}: {source}")]
    Model {
        path: String,
        source: crate::model::ModelError,
    },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: String, message: String },
}

/// Everything needed to serve requests from one file on the CPU.
pub struct LoadedModel {
    pub file: GgufFile,
    pub spec: ModelSpec,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub cpu: CpuModel,
}

impl LoadedModel {
    pub fn open(path: &Path) -> Result<LoadedModel, OpenError> {
        let p = path.display().to_string();
        let file = GgufFile::open(path).map_err(|source| OpenError::Gguf {
            path: p.clone(),
            source,
        })?;
        let spec = ModelSpec::from_file(&file).map_err(|source| OpenError::Model {
            path: p.clone(),
            source,
        })?;
        let tokenizer =
            Tokenizer::from_metadata(file.metadata()).map_err(|e| OpenError::Tokenizer {
                path: p.clone(),
                message: e.to_string(),
            })?;
        let template =
            ChatTemplate::from_metadata(file.metadata()).map_err(|e| OpenError::Tokenizer {
                path: p.clone(),
                message: e.to_string(),
            })?;
        if tokenizer.vocab_size() > spec.hp.vocab {
            return Err(OpenError::Tokenizer {
                path: p,
                message: format!(
                    "the tokenizer has {} tokens but token_embd.weight only {} rows",
                    tokenizer.vocab_size(),
                    spec.hp.vocab
                ),
            });
        }
        let cpu =
            CpuModel::load(&file, &spec).map_err(|source| OpenError::Model { path: p, source })?;
        Ok(LoadedModel {
            file,
            spec,
            tokenizer,
            template,
            cpu,
        })
    }

    /// A fresh sequence of `ctx` positions.
    pub fn evaluator(&self, ctx: usize) -> CpuEvaluator<'_> {
        CpuEvaluator {
            model: &self.cpu,
            session: CpuSession::new(&self.spec.hp, ctx, DEFAULT_MAX_BATCH),
        }
    }
}

/// One sequence on the CPU backend.
pub struct CpuEvaluator<'a> {
    pub model: &'a CpuModel,
    pub session: CpuSession,
}

impl Evaluator for CpuEvaluator<'_> {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError> {
        self.session.eval(&self.model.hp, self.model, tokens)
    }
}
