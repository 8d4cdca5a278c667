# syntax=docker/dockerfile:1
# layerstream image: one worker serving one GGUF model on port 8080 (docs/deploy.md).
#
#   docker build -t layerstream .
#   docker run --gpus all -p 8080:8080 -v "$PWD/models:/models:ro" layerstream  # models/model.gguf
#   docker run -p 8080:8080 -v "$PWD/models:/models:ro" layerstream   # no GPU: serves on the CPU
# Extra arguments go to `layerstream serve` (e.g. `--ctx-size 8192`); every flag is also a
# LAYERSTREAM_* variable. The host needs an NVIDIA driver >= 580 (CUDA 13.0) and the NVIDIA
# Container Toolkit for the GPU; without either the same image serves on the CPU.

# ---- build --------------------------------------------------------------------------------------
# The CUDA compiler comes from scripts/install-cuda-toolchain (the pinned CUDA 13.0 nvcc wheels from
# PyPI), not from an nvidia/cuda devel image: it is the exact compiler CI and the GPU runs use (a
# newer NVVM emits PTX the 13.0 ptxas and the 580 driver reject; see the script), and its ~0.3 GB of
# wheels is a fraction of a multi-GB devel image. The kernels need no GPU to compile. Debian
# bookworm's glibc (2.36) is older than the run stage's (Ubuntu 24.04: 2.39), so the binary runs.
FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
# python3-venv for the compiler wheels' venv; gcc/g++ (nvcc's host compiler) and git (the commit
# stamp, build.rs) are in the rust image already.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The compiler first, in its own layer: it changes far less often than the source.
COPY scripts/install-cuda-toolchain scripts/
RUN scripts/install-cuda-toolchain > /tmp/nvcc-path
# .dockerignore lets through only what the build reads (and .git, for `layerstream --version`).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    NVCC="$(cat /tmp/nvcc-path)" cargo build --release --locked --features cuda \
    && cp target/release/layerstream /usr/local/bin/layerstream

# ---- run ----------------------------------------------------------------------------------------
# cudarc loads every CUDA library with dlopen at run time (`ldd layerstream` lists only libc,
# libm and libgcc_s): libcuda.so.1 comes from the host's driver, mounted by the NVIDIA Container
# Toolkit, and cuBLAS (libcublas.so.13 + libcublasLt.so.13) from NVIDIA's apt repository, which the
# cuda base image has configured. The -runtime image would add cuFFT, cuSPARSE, NPP, ... that
# nothing loads. No libcuda (no GPU, or run without the toolkit): `--device auto` uses the CPU.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
# cuBLAS's directory goes on the loader's path, and the build fails here, not at the first GPU
# request, if libcublas.so.13 or libcublasLt.so.13 cannot be found by name.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcublas-13-0 \
    && rm -rf /var/lib/apt/lists/* \
    && lib=$(find /usr/local -name libcublas.so.13 -print -quit) \
    && dirname "$lib" > /etc/ld.so.conf.d/zz-cublas.conf \
    && ldconfig \
    && ldconfig -p | grep 'libcublas\.so\.13 ' \
    && ldconfig -p | grep 'libcublasLt\.so\.13 ' \
    && groupadd --gid 10001 layerstream \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin layerstream \
    && mkdir -p /models
COPY --from=build /usr/local/bin/layerstream /usr/local/bin/layerstream

# `--host 0.0.0.0 --port 8080 --model /models/model.gguf`, as variables so that arguments given to
# `docker run` add to them instead of replacing them.
ENV LAYERSTREAM_HOST=0.0.0.0 \
    LAYERSTREAM_PORT=8080 \
    LAYERSTREAM_MODEL=/models/model.gguf
# A numeric user, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080
# /live: the process serves HTTP (readiness is /ready, for load balancers). No curl in the image:
# bash's /dev/tcp sends the request.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", \
         "exec 3<>/dev/tcp/127.0.0.1/${LAYERSTREAM_PORT:-8080} && printf 'GET /live HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# exec form: layerstream is PID 1 and gets SIGTERM itself (it drains running requests for 10 s).
ENTRYPOINT ["layerstream", "serve"]
