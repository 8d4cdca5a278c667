//! cuBLAS for the prefill projections: Y[n, N] (+)= X[n, K] · W[N, K]ᵀ with F16 inputs, F32
//! accumulation and an F32 output (beta = 1 adds into the residual stream in place).

use std::ffi::c_void;

use cudarc::cublas::sys::{self, cublasHandle_t, cublasOperation_t, cudaDataType};
use cudarc::driver::sys::CUdeviceptr;

use super::driver::Stream;

pub struct Blas(cublasHandle_t);

unsafe impl Send for Blas {}

fn ck(what: &str, r: sys::cublasStatus_t) -> Result<(), String> {
    if r == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} failed: {r:?}"))
    }
}

impl Blas {
    /// A handle issuing on `s`.
    pub fn new(s: &Stream) -> Result<Blas, String> {
        let mut h = std::ptr::null_mut();
        ck("cublasCreate", unsafe { sys::cublasCreate_v2(&mut h) })?;
        ck("cublasSetStream", unsafe {
            sys::cublasSetStream_v2(h, s.0 as _)
        })?;
        Ok(Blas(h))
    }

    /// Y[n, out] = X[n, k] · W[out, k]ᵀ (+ Y when `accumulate`), row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        x: CUdeviceptr,
        w: CUdeviceptr,
        y: CUdeviceptr,
        n: usize,
        out: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<(), String> {
        let alpha = 1.0f32;
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        // Column-major view: Yᵀ[out, n] = W[k, out]ᵀ · Xᵀ[k, n].
        ck("cublasGemmEx", unsafe {
            sys::cublasGemmEx(
                self.0,
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                out as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                cudaDataType::CUDA_R_16F,
                k as i32,
                x as *const c_void,
                cudaDataType::CUDA_R_16F,
                k as i32,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                cudaDataType::CUDA_R_32F,
                out as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        unsafe { sys::cublasDestroy_v2(self.0) };
    }
}
