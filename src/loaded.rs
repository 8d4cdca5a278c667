//! A model opened for use: file validated, tokenizer and chat template built, weights fully
//! resident on the chosen backend. What the CLI commands share.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::cpu::CpuModel;
use crate::backend::{self, cuda, Backend, BackendError, Session};
use crate::chat_template::ChatTemplate;
use crate::config::Device;
use crate::generation::Evaluator;
use crate::gguf::GgufFile;
use crate::load::loader::LoaderOptions;
use crate::load::plan::LoadPlan;
use crate::load::progress::Progress;
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
    #[error("{path}: {message}")]
    Backend { path: String, message: String },
}

/// Everything needed to serve requests from one file.
pub struct LoadedModel {
    pub file: Arc<GgufFile>,
    pub spec: ModelSpec,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub backend: Arc<dyn Backend>,
}

/// Which backend `LoadedModel::open_on` loads onto.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub device: Device,
    pub gpu: usize,
    /// Positions reserved for the one sequence (the CUDA backend reserves its KV cache up front).
    pub ctx: usize,
}

impl LoadedModel {
    /// On the CPU.
    pub fn open(path: &Path) -> Result<LoadedModel, OpenError> {
        LoadedModel::open_on(
            path,
            Placement {
                device: Device::Cpu,
                gpu: 0,
                ctx: 0,
            },
        )
    }

    /// On the device `at` names (`auto`: CUDA when available), waiting until fully resident.
    pub fn open_on(path: &Path, at: Placement) -> Result<LoadedModel, OpenError> {
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
        let file = Arc::new(file);
        let backend = load_backend(&file, &spec, at).map_err(|message| OpenError::Backend {
            path: p.clone(),
            message,
        })?;
        Ok(LoadedModel {
            file,
            spec,
            tokenizer,
            template,
            backend,
        })
    }

    /// A fresh sequence of `ctx` positions.
    pub fn evaluator(&self, ctx: usize) -> Result<ModelEvaluator, BackendError> {
        Ok(ModelEvaluator {
            session: self.backend.clone().new_session(ctx)?,
        })
    }
}

/// One sequence on the loaded model's backend.
pub struct ModelEvaluator {
    pub session: Box<dyn Session>,
}

impl Evaluator for ModelEvaluator {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError> {
        self.session.eval(tokens)
    }
}

/// Load every unit of `file` onto the device `at` names, waiting until fully resident.
pub fn load_backend(
    file: &Arc<GgufFile>,
    spec: &ModelSpec,
    at: Placement,
) -> Result<Arc<dyn Backend>, String> {
    let use_cuda = matches!(
        backend::choose_device(at.device, at.gpu)?,
        backend::DeviceChoice::Cuda(_)
    );
    if !use_cuda {
        let cpu = CpuModel::load(file, spec).map_err(|e| e.to_string())?;
        return Ok(Arc::new(cpu));
    }
    let plan = LoadPlan::new(file, spec);
    let progress = Arc::new(Progress::new(&plan, Instant::now()));
    let backend = cuda::start(cuda::CudaStart {
        file: file.clone(),
        spec: spec.clone(),
        plan,
        progress,
        options: LoaderOptions::default(),
        ordinal: at.gpu,
        ctx: at.ctx.clamp(1, spec.hp.context),
    })?;
    backend
        .residency()
        .wait_all()
        .map_err(|e| BackendError::from(e).to_string())?;
    Ok(backend)
}
