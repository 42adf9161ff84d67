"""The run session every training stage shares (source SVGD / independent, MPT's source, target).

A stage owns only its step maths; the session owns what is the same for all of them:

    session = RunSession(cfg, "target")  # options, data folder, device, run folder, checkpoint: all
                                         # checked before anything slow is loaded or anything written
    ... load data and model, build parameters and optimiser ...
    out = session.open(opt, restore)     # create the folder (config.yaml) or resume: log cut back to the
                                         # checkpoint, the stage's own state, then optimiser and RNG
    for step in session.steps("target"):
        ... one step; raise session.nonfinite(...) on NaN/inf ...
        if session.checkpoint_due(step):
            session.save_checkpoint(step, tensors, opt, state)

Resuming continues exactly where the checkpoint was written: the log is cut back to the checkpoint's
byte position (steps the killed process logged after it are not duplicated), its clock continues,
and the optimiser and RNG states are restored last, so an interrupted run ends as an uninterrupted one.

Under torchrun (`bmtpt.distributed`) every process runs the same session: all of them check the inputs
and read the same checkpoint; only rank 0 creates the folder, logs, shows progress and writes checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, check_resume_options, load_checkpoint, save_checkpoint
from .config import CommonConfig
from .distributed import init_distributed
from .errors import BmtptError
from .runs import JsonlLog, check_data_dir, check_run_dir, prepare_run_dir, resolve_device, save_config, seed_everything


class RunSession:
    """One training run's folder, resume, metrics log, step loop, checkpoints and non-finite errors.

    `kind` names the run in config.yaml and in its checkpoint ('source', 'target', 'mpt-source'): a
    checkpoint of another kind is refused on resume. `cfg` needs out, overwrite, resume, steps, seed,
    checkpoint_every, progress, data_dir and device.
    """

    def __init__(self, cfg: CommonConfig, kind: str):
        cfg.validate()
        check_data_dir(cfg.data_dir)
        self.cfg, self.kind = cfg, kind
        self.dist, self.device = init_distributed(resolve_device(cfg.device))
        self.out = check_run_dir(cfg)
        self.ckpt: Checkpoint | None = load_checkpoint(cfg.out, kind) if cfg.resume else None
        if self.ckpt is not None:
            check_resume_options(self.ckpt.config, cfg.to_dict(), cfg.out)
        self.dist.barrier()  # every process has checked the folder before rank 0 writes into it
        self.start, self.last_saved = 1, None
        self.log: JsonlLog | None = None

    def seed(self) -> None:
        """Seed every RNG with the run's seed (before the data and the parameters are drawn)."""
        seed_everything(self.cfg.seed)

    def open(self, optimizer: torch.optim.Optimizer, restore: Callable[[Checkpoint], None] | None = None) -> Path:
        """Create the run folder (fresh: config.yaml) or resume into it; returns the folder.

        Resuming cuts the log back to the checkpoint, calls `restore(checkpoint)` to load the stage's own
        tensors and state (a missing key is reported as an incomplete checkpoint), then restores the
        optimiser and the RNG states: nothing after this may draw random numbers before the first step.
        """
        main = self.dist.is_main
        out = prepare_run_dir(self.cfg, resumable=True) if main else self.out
        self.dist.barrier()
        self.log = JsonlLog(out / "metrics.jsonl", enabled=main)
        ckpt = self.ckpt
        if ckpt is None:
            if main:
                save_config(out, self.kind, self.cfg)
            return out
        # the resumed run keeps the interrupted run's config.yaml
        try:
            if restore is not None:
                restore(ckpt)
            self.log.truncate(ckpt.state["log_position"])
            self.log = JsonlLog(self.log.path, elapsed=ckpt.state["elapsed_s"], enabled=main)
        except (KeyError, ValueError, TypeError) as e:
            raise BmtptError(f"checkpoint {ckpt.path} is incomplete ({type(e).__name__}: {e})") from e
        ckpt.restore(optimizer)
        self.start, self.last_saved = ckpt.step + 1, ckpt.step
        return out

    def steps(self, desc: str) -> Iterator[int]:
        """The steps still to run (1..steps, or from the checkpoint's next), under a progress bar."""
        self.bar = tqdm(range(self.start, self.cfg.steps + 1), initial=self.start - 1, total=self.cfg.steps,
                        desc=desc, disable=not (self.cfg.progress and self.dist.is_main))
        yield from self.bar

    def show(self, **values: float) -> None:
        """Numbers beside the progress bar (e.g. the step's loss)."""
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})

    def checkpoint_due(self, step: int) -> bool:
        """Every --checkpoint-every steps, and after the last step."""
        return step % self.cfg.checkpoint_every == 0 or step == self.cfg.steps

    def save_checkpoint(self, step: int, tensors: dict, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Write the run state after `step`: the stage's tensors and state, the log position and clock, the
        optimiser and RNG states (`bmtpt.checkpoint`); rank 0 writes it."""
        if self.dist.is_main:
            save_checkpoint(self.out, self.kind, step, self.cfg.to_dict(), tensors, optimizer,
                            {**state, "log_position": self.log.position(), "elapsed_s": self.log.elapsed()})
        self.last_saved = step

    def finish(self) -> None:
        """Wait until rank 0 has written the results (a no-op for one process): when a stage returns, its
        files exist for every process."""
        self.dist.barrier()

    def nonfinite(self, what: str, step: int, on: Sequence[str]) -> BmtptError:
        """The error for a NaN/inf at `step` on the named tasks; it says which checkpoint survives."""
        kept = (f"the last good checkpoint (step {self.last_saved}) is kept in {self.out}" if self.last_saved
                else "no checkpoint yet")
        return BmtptError(f"{what} became non-finite at step {step} on task{'s' * (len(on) > 1)} {', '.join(on)}; "
                          f"{kept} (try a lower --lr)")
