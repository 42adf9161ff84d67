"""`bmtpt target`'s entry point: which target run a configuration asks for.

    --particles 1 (the default)   target.run_target: one MAP prompt (pt, avg, bmtpt)
    --particles M > 1             ensemble.run_target_ensemble: a target posterior of M prompts
    --method attempt              attempt.run_target_attempt: ATTEMPT's input-dependent prompt
"""

from __future__ import annotations

from .attempt import run_target_attempt
from .config import TargetConfig
from .ensemble import run_target_ensemble
from .target import TargetResult, run_target


def train_target(cfg: TargetConfig, model=None, tokenizer=None) -> TargetResult:
    """Run the target stage `cfg` asks for (see the module docstring) and return its result."""
    if cfg.method == "attempt":
        return run_target_attempt(cfg, model, tokenizer)
    if cfg.particles > 1:
        return run_target_ensemble(cfg, model, tokenizer)
    return run_target(cfg, model, tokenizer)
