"""Stein Variational Gradient Descent and kernel densities: pure tensor code.

Nothing here knows about language models: a "particle" is any tensor, flattened for the kernel.
The source stage (`bmtpt.source`) and the target prior (`bmtpt.target`) compose these functions.

Conventions (Liu & Wang, 2016): RBF kernel k(x, y) = exp(-||x - y||^2 / h) with the median heuristic
h = median_{i<j} ||x_i - x_j||^2 / log(M + 1), and the SVGD direction

    phi(x_i) = 1/M sum_j [ k(x_j, x_i) s_j  +  grad_{x_j} k(x_j, x_i) ]
             =           drive_i            +        repulse_i

where s_j = grad log p(x_j) is particle j's score. phi is an *ascent* direction on log p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def pairwise_sq_dists(particles: Tensor) -> Tensor:
    """Squared Euclidean distances between flattened particles, shape (M, M), computed in float64.

    float64 because in a 76,800-dimensional prompt space the ||x||^2 + ||y||^2 - 2<x, y> expansion
    cancels catastrophically in float32 when particles are close; float64 keeps ~1e-12 relative error
    without materialising the (M, M, D) difference tensor.
    """
    x = particles.reshape(particles.shape[0], -1).to(torch.float64)
    sq_norms = (x * x).sum(-1)
    sq = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)
    sq.fill_diagonal_(0.0)
    return sq.clamp_min(0.0)


def median_bandwidth(sq_dists: Tensor) -> float:
    """Median heuristic h = median of the squared distances over pairs i < j, divided by log(M + 1).

    Falls back to h = 1 when there is a single particle or all particles coincide (any h then gives
    k = 1 and a zero repulsive term, so the value does not matter).
    """
    m = sq_dists.shape[0]
    if m < 2:
        return 1.0
    iu = torch.triu_indices(m, m, offset=1)
    # torch.median returns the lower of the two middle values; numpy's mean of the two is the usual
    # definition of the median, so use quantile(0.5), which interpolates.
    med = torch.quantile(sq_dists[iu[0], iu[1]], 0.5).item()
    if not med > 0:
        return 1.0
    return med / math.log(m + 1)


def rbf_kernel(sq_dists: Tensor, bandwidth: float) -> Tensor:
    """k = exp(-d^2 / h) elementwise on a matrix of squared distances."""
    return torch.exp(-sq_dists / bandwidth)


@dataclass
class SVGDTerms:
    """The two parts of the SVGD direction, and the kernel quantities that produced them."""

    drive: Tensor  # (M, ...) 1/M sum_j k_ji s_j
    repulse: Tensor  # (M, ...) 1/M sum_j grad_{x_j} k(x_j, x_i)
    bandwidth: float
    kernel: Tensor  # (M, M), float64
    sq_dists: Tensor  # (M, M), float64

    @property
    def direction(self) -> Tensor:
        """phi = drive + repulse."""
        return self.drive + self.repulse


KERNEL_VIEWS = ("flat", "row-mean")


def _rbf_repulsion(x: Tensor, k: Tensor, h: float) -> Tensor:
    """1/M sum_j grad_{x_j} k(x_j, x_i) for every i, (M, D), given the RBF kernel matrix k of the rows of x."""
    # grad_{x_j} exp(-||x_j - x_i||^2 / h) = -(2/h) (x_j - x_i) k_ji; summed over j this is
    # (2/h) (x_i sum_j k_ji - sum_j k_ji x_j).
    return (2.0 / (h * x.shape[0])) * (k.sum(0)[:, None] * x - k.T @ x)


def function_terms(features: Tensor, scores: Tensor, bandwidth: float | None = None) -> SVGDTerms:
    """SVGD with the kernel on what the particles compute instead of on their parameters (function space).

    `features[i]` is particle i's output on the step's examples (M, B), e.g. each example's log-likelihood.
    The drive is 1/M sum_j k(f_j, f_i) s_j, in the shape of `scores`; `repulse` is returned in feature space,
    (M, B): r_i = 1/M sum_j grad_{f_j} k(f_j, f_i). The caller pulls it back to the parameters through each
    particle's Jacobian, J_i^T r_i = grad_theta_i (r_i . f_i) with r_i held fixed (as function-space SVGD does,
    Wang et al. 2019): prompts that *predict* alike repel, however far apart their parameters lie.
    """
    if features.dim() != 2 or features.shape[0] != scores.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} must be (M, B) for the {scores.shape[0]} particles")
    m = features.shape[0]
    f = features.to(torch.float64)
    sq = pairwise_sq_dists(f)
    h = median_bandwidth(sq) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, got {h}")
    k = rbf_kernel(sq, h)
    drive = k.T @ scores.reshape(m, -1).to(torch.float64) / m
    return SVGDTerms(drive.reshape(scores.shape).to(scores.dtype), _rbf_repulsion(f, k, h), h, k, sq)


def svgd_terms(particles: Tensor, scores: Tensor, bandwidth: float | None = None, view: str = "flat") -> SVGDTerms:
    """Compute the driving and repulsive parts of the SVGD direction separately (for logging).

    `view` is what the kernel compares: `flat`, the whole particle; `row-mean`, each particle's mean over its
    first axis (for a prompt, its mean token vector: a d-dimensional view of an l x d particle, where
    distances do not all concentrate at the same value). The kernel of a linear view P stays a kernel on the
    particles, and its gradient is P^T applied to the view's gradient: for the row mean, the view's
    repulsion divided by the number of rows, on every row.
    """
    if particles.shape != scores.shape:
        raise ValueError(f"particles {tuple(particles.shape)} and scores {tuple(scores.shape)} differ")
    if view not in KERNEL_VIEWS:
        raise ValueError(f"unknown kernel view {view!r} (choose {', '.join(KERNEL_VIEWS)})")
    m = particles.shape[0]
    seen = particles if view == "flat" else particles.reshape(m, particles.shape[1], -1).mean(1)
    sq = pairwise_sq_dists(seen)
    h = median_bandwidth(sq) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, got {h}")
    k = rbf_kernel(sq, h)  # symmetric: k[j, i] = k(x_j, x_i)
    x = seen.reshape(m, -1).to(torch.float64)
    s = scores.reshape(m, -1).to(torch.float64)
    drive = k.T @ s / m
    repulse = _rbf_repulsion(x, k, h)
    if view == "row-mean":  # back through the mean: 1/rows of the view's gradient on every row
        rows = particles.shape[1]
        repulse = (repulse / rows)[:, None, :].expand(m, rows, repulse.shape[1])
    shape, dtype = particles.shape, particles.dtype
    return SVGDTerms(drive.reshape(shape).to(dtype), repulse.reshape(shape).to(dtype), h, k, sq)


def svgd_direction(particles: Tensor, scores: Tensor, bandwidth: float | None = None) -> Tensor:
    """The SVGD ascent direction phi for each particle (shape (M, ...) like `particles`).

    `scores[j]` is grad log p at `particles[j]`; `bandwidth` is h of the RBF kernel exp(-d^2/h)
    (None: median heuristic). With M = 1 the result is the score itself.
    """
    return svgd_terms(particles, scores, bandwidth).direction


def kde_log_density(x: Tensor, particles: Tensor, bandwidth: float, log_weights: Tensor | None = None) -> Tensor:
    """Log of the (unnormalised) kernel density sum_m w_m exp(-||x - x_m||^2 / h); differentiable in x.

    Weights w_m = 1/M unless `log_weights` (M,) gives them (normalised here). The normalising constant
    (pi h)^(D/2) does not depend on x, so it is dropped: only gradients and differences of this quantity
    are meaningful.
    """
    m = particles.shape[0]
    diff = x.reshape(1, -1).to(particles.dtype) - particles.reshape(m, -1)
    sq = (diff * diff).sum(-1)
    if log_weights is None:
        return torch.logsumexp(-sq / bandwidth, dim=0) - math.log(m)
    lw = log_weights.to(sq.dtype).to(sq.device)
    return torch.logsumexp(-sq / bandwidth + lw, dim=0) - torch.logsumexp(lw, dim=0)


def gaussian_log_density(x: Tensor, mean: Tensor, variance: float) -> Tensor:
    """Log of an isotropic Gaussian N(mean, variance I) without its constant; differentiable in x."""
    diff = x.reshape(-1) - mean.reshape(-1).to(x.dtype)
    return -(diff * diff).sum() / (2.0 * variance)


def diag_gaussian_log_density(x: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """Log of N(mean, diag(1 / precision)) without its constant: -1/2 sum_j precision_j (x_j - mean_j)^2."""
    diff = x.reshape(-1) - mean.reshape(-1).to(x.dtype)
    return -0.5 * (precision.reshape(-1).to(x.dtype) * diff * diff).sum()


def mean_pairwise_distance(sq_dists: Tensor) -> float:
    """Mean Euclidean distance over distinct pairs (0 for a single particle): a spread diagnostic."""
    m = sq_dists.shape[0]
    if m < 2:
        return 0.0
    iu = torch.triu_indices(m, m, offset=1)
    return sq_dists[iu[0], iu[1]].clamp_min(0).sqrt().mean().item()


def task_interference(task_scores: Tensor) -> Tensor:
    """The K x K interference matrix of K tasks' scores (K, M, ...): for each pair of tasks the cosine
    similarity of their score directions, per particle, averaged over the M particles. Positive: the tasks
    pull a particle the same way; negative: they conflict. A zero score counts as orthogonal."""
    k, m = task_scores.shape[:2]
    flat = task_scores.reshape(k, m, -1).double()
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return torch.einsum("imd,jmd->ij", unit, unit) / m


REPULSION_SCHEDULES = ("constant", "anneal", "cyclic", "decay")


def repulsion_weight(schedule: str, step: int, steps: int, cycles: int = 4) -> float:
    """The factor on SVGD's repulsive term at `step` of `steps` (1-based):

    constant 1; anneal t = step/steps (the drive alone at first, full repulsion at the end, as annealed SVGD
    lets particles find modes before spreading them); cyclic the same ramp repeated `cycles` times; decay
    1 - (step - 1)/steps (full repulsion first, damped towards the end).
    """
    t = step / steps
    if schedule == "constant":
        return 1.0
    if schedule == "anneal":
        return t
    if schedule == "cyclic":
        period = steps / cycles
        return ((step - 1) % period + 1) / period if period >= 1 else t
    if schedule == "decay":
        return 1.0 - (step - 1) / steps
    raise ValueError(f"unknown repulsion schedule {schedule!r} (choose from {', '.join(REPULSION_SCHEDULES)})")

