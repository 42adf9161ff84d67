"""Runs over several processes (GPUs or nodes) with torch.distributed, launched by `torchrun`.

    torchrun --nproc_per_node 4 -m bmtpt source ...      # the usual options; every process runs the command

Only the prompts learn and they are small (a T5-base prompt of 100 x 768 is 0.3 MB), so every process keeps
every prompt and applies the same update; what is split is the work of a step, and the exchange is one
all-reduce of the prompts' gradients (or scores) per step, tiny next to the backbone's compute:

- data-parallel (the default): each process takes a contiguous shard of every batch's rows; the partial
  sums (each divided by the token count of the *whole* batch, as gradient accumulation does) are summed
  across processes, so the step equals one process's step on the whole batch.
- particle-parallel (`--parallel particle`, SVGD source stages): each process scores its own block of
  the M particles on the whole batch; the scores are summed into the full (M, l, d) tensor (an all-gather
  by another name), then every process computes the same kernel and update. It wins when M is large and
  the batch small; data-parallel wins for large batches and few particles.

Evaluations are sharded by example and the predictions gathered in order. Only rank 0 logs, shows
progress and writes files (checkpoints included); every rank reads the same checkpoint to resume. Plain
torch.distributed (gloo on CPUs, NCCL on GPUs) rather than Accelerate: the only collective needed is an
all-reduce of a few small tensors, and a frozen backbone needs no DDP wrapper.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from .errors import BmtptError

PARALLEL_MODES = ("data", "particle")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, number of processes (1: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world > 1

    def block(self, n: int) -> range:
        """This rank's contiguous block of range(n) (`torch.tensor_split` sizes: the first n % world blocks
        hold one more)."""
        size, extra = divmod(n, self.world)
        start = self.rank * size + min(self.rank, extra)
        return range(start, start + size + (self.rank < extra))

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor across processes, in place (a no-op for one process)."""
        if not self.active:
            return
        nccl = torch_dist.get_backend() == "nccl"
        for t in tensors:
            if nccl and t.device.type == "cpu":  # NCCL reduces GPU tensors only
                moved = t.cuda()
                torch_dist.all_reduce(moved, op=torch_dist.ReduceOp.SUM)
                t.copy_(moved.cpu())
            else:
                torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)

    def gather(self, items: Sequence) -> list:
        """Every rank's `items` (each rank's `block` of a list), concatenated in rank order, on every rank."""
        if not self.active:
            return list(items)
        out: list = [None] * self.world
        torch_dist.all_gather_object(out, list(items))
        return [x for part in out for x in part]

    def barrier(self) -> None:
        """Wait for every process (e.g. until rank 0 has created the run folder)."""
        if self.active:
            torch_dist.barrier()


def init_distributed(device: str) -> tuple[Dist, str]:
    """(this process's Dist, its device) from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK).

    One process (no WORLD_SIZE above 1) is Dist(0, 1) and keeps `device`. Several: the process group is
    started (NCCL on CUDA, gloo on CPUs) and CUDA processes take the GPU of their LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise BmtptError(f"process {local} of this node has no GPU of its own ({torch.cuda.device_count()} "
                             "visible): start at most one process per GPU")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size()), device
