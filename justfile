# Common tasks; each recipe is a thin wrapper over a script so a fresh machine needs no `just`.

# Build, fetch the default model, run a chat request on it.
run *ARGS:
    scripts/run {{ARGS}}

# The whole test suite (what CI runs).
test *ARGS:
    scripts/test {{ARGS}}

# Fetch and cache the real test model (Q4_K_M + its F16 conversion); prints their paths.
fetch-model:
    scripts/fetch-test-model

# CPU throughput of layerstream next to llama.cpp on the real F16 model.
bench-cpu:
    scripts/bench-cpu

# Build here what the GPU machine runs (binary, service test binaries, peer source, model pieces).
gpu-prepare:
    scripts/gpu/prepare --pieces

# On the GPU machine: every GPU test and benchmark, a results table last (see scripts/gpu/run-all).
test-gpu *STAGES="models peer check service sanitize profile bench load":
    scripts/gpu/run-all {{STAGES}}

# Regenerate golden data from Hugging Face transformers (needs the golden venv).
golden:
    scripts/golden/setup-venv
    .venv-golden/bin/python scripts/golden/tokenizer.py
    .venv-golden/bin/python scripts/golden/model.py tiny
    .venv-golden/bin/python scripts/golden/model.py real
    .venv-golden/bin/python scripts/golden/family_real.py
    .venv-golden/bin/python scripts/golden/dequant.py

# Fuzz the GGUF reader (cargo-fuzz, libFuzzer) for SECS seconds from the committed seeds; see docs/reliability.md.
fuzz SECS="60":
    fuzz/run {{SECS}}
