//! The CUDA backend's stand-in in builds without the `cuda` feature: the same API, and every
//! entry point says the binary was built without CUDA, so call sites carry no `cfg`.

use std::sync::Arc;

use super::Backend;
use crate::gguf::GgufFile;
use crate::load::loader::LoaderOptions;
use crate::load::plan::LoadPlan;
use crate::load::progress::Progress;
use crate::model::ModelSpec;

const NOT_BUILT: &str = "this binary was built without CUDA (rebuild with `--features cuda`)";

/// Everything `start` needs (the same fields as the CUDA build's).
pub struct CudaStart {
    pub file: Arc<GgufFile>,
    pub spec: ModelSpec,
    pub plan: LoadPlan,
    pub progress: Arc<Progress>,
    pub options: LoaderOptions,
    pub ordinal: usize,
    pub ctx: usize,
}

/// Always fails: no CUDA support in this build.
pub fn probe(_ordinal: usize) -> Result<String, String> {
    Err(NOT_BUILT.into())
}

/// Nothing to prepare in a build without CUDA.
pub fn prewarm(_ordinal: usize) {}

/// Always fails: no CUDA support in this build.
pub fn start(_s: CudaStart) -> Result<Arc<dyn Backend>, String> {
    Err(NOT_BUILT.into())
}

/// `layerstream check-cuda` in a build without CUDA.
pub mod check {
    pub fn run(_args: &crate::cli::CheckCudaArgs) -> Result<String, String> {
        Err(super::NOT_BUILT.into())
    }
}
