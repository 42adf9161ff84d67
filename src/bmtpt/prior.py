"""The source posterior as the target stage's prior: a density over prompts built from the particles.

    loss = mean target NLL  -  lambda_eff * log p_hat(theta)

Shapes of p_hat (`--prior`):
- `kde`: the paper's kernel density over the particles, exp(-||theta - theta_m||^2 / h) averaged over m;
- `gaussian`: an isotropic Gaussian at the particles' mean with the kernel's width (variance h / 2);
- `diag`: a Gaussian at the mean whose per-coordinate variance is the particles' spread along that
  coordinate, shrunk toward the mean spread (where the source posterior agrees, the pull is strong; where
  particles differ, it is weak);
- `fisher`: a diagonal Laplace approximation: precision proportional to the source stage's squared
  scores (the empirical Fisher, `fisher` in particles.safetensors), i.e. where the source loss is sharp.

`diag` and `fisher` only *shape* the precision: both are rescaled so that their mean precision is the
isotropic Gaussian's, 2 / h, so h (the bandwidth) and lambda set the overall strength whatever the shape.
A small floor (`FLOOR` times the mean) keeps every precision positive and finite.

`--particle-weights target` weighs the particles by their likelihood of the target training set (at most
WEIGHT_EXAMPLES examples): w_m proportional to p(D_T | theta_m), the posterior probability of each particle
once the target data are seen. The start becomes the weighted mean, the KDE a weighted mixture and the
Gaussians' centre the weighted mean (their spread stays the particles'). With particles that specialise in
one source task each (`bmtpt source --specialise`), this picks the related source's particle softly.

`--prior-weight-rule` sets lambda_eff: `fixed` uses lambda as given (per step, against the per-token mean
NLL); `bayes` divides it by the target training set's label tokens, as Bayes' rule does when the
log-likelihood is the *sum* over the training set and the prior enters once: the prior then weighs less
as the target set grows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .data import batch_of
from .errors import BmtptError
from .runfiles import load_posterior
from .svgd import diag_gaussian_log_density, gaussian_log_density, kde_log_density

KINDS = ("kde", "gaussian", "diag", "fisher")
WEIGHT_RULES = ("fixed", "bayes")
FLOOR = 0.01  # a precision's floor, relative to the mean precision before rescaling
WEIGHT_EXAMPLES = 256  # target training examples that weigh the particles (a fixed seeded sample beyond that)
SHRINK = 0.1  # diag: each coordinate's variance plus SHRINK x the mean variance (few particles, noisy variances)


def shaped_precision(raw: Tensor, bandwidth: float) -> Tensor:
    """Per-coordinate precisions proportional to `raw` (floored at FLOOR x its mean), rescaled to mean 2 / h."""
    raw = raw.double()
    if not raw.mean() > 0:
        raise BmtptError("the prior's precision shape is all zero (particles that coincide, or no Fisher estimate)")
    p = raw.clamp_min(FLOOR * raw.mean())
    return (p * (2.0 / bandwidth) / p.mean()).float()


class PriorTerm:
    """log p_hat(theta) of the source posterior, differentiable in theta (l, d); see the module docstring."""

    def __init__(self, particles: Tensor, bandwidth: float, kind: str = "kde", fisher: Tensor | None = None,
                 log_weights: Tensor | None = None):
        if kind not in KINDS:
            raise BmtptError(f"unknown --prior {kind!r} (choose {', '.join(KINDS)})")
        self.particles, self.bandwidth, self.kind = particles, float(bandwidth), kind
        self.log_weights = log_weights
        self.mean = weighted_mean(particles, log_weights)
        self.precision = None
        if kind == "diag":
            if len(particles) < 2:
                raise BmtptError("--prior diag needs at least two particles (their spread is its variance)")
            var = particles.double().var(0)  # shrunk toward its mean, so a coordinate where 3 particles happen
            self.precision = shaped_precision(1.0 / (var + SHRINK * var.mean()), self.bandwidth)  # to agree stays sane
        elif kind == "fisher":
            if fisher is None:
                raise BmtptError("--prior fisher needs a posterior with a Fisher estimate (particles.safetensors "
                                 "'fisher', written by `bmtpt source` since this option exists)")
            self.precision = shaped_precision(fisher, self.bandwidth).to(particles.device)

    def __call__(self, theta: Tensor) -> Tensor:
        """Log density (up to a constant) at theta."""
        if self.kind == "kde":
            return kde_log_density(theta, self.particles, self.bandwidth, self.log_weights)
        if self.kind == "gaussian":
            return gaussian_log_density(theta, self.mean, self.bandwidth / 2)
        return diag_gaussian_log_density(theta, self.mean, self.precision)


def weighted_mean(particles: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """The particles' mean, (l, d): plain, or weighted by softmax(log_weights)."""
    if log_weights is None:
        return particles.mean(0)
    w = torch.softmax(log_weights.double(), 0).to(particles.dtype).to(particles.device)
    return (w[:, None, None] * particles).sum(0)


@torch.no_grad()
def particle_log_weights(pm, particles: Tensor, enc, examples: int = WEIGHT_EXAMPLES, batch: int = 16) -> Tensor:
    """log p(m | D_T), (M,): each particle's summed log-likelihood of the target training set's targets (at
    most `examples` of them, a fixed seeded sample), normalised over the particles."""
    n = len(enc)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:examples].tolist() if n > examples \
        else list(range(n))
    m = particles.shape[0]
    loglik = torch.zeros(m, dtype=torch.float64)
    for start in range(0, len(ids), batch):
        part = ids[start:start + batch]
        nll, _ = pm.example_nll(particles.to(pm.device), batch_of(enc, part, pm.pad_id, pm.is_seq2seq))
        loglik -= nll.double().cpu().view(m, len(part)).sum(1)  # rows particle-major
    return loglik - torch.logsumexp(loglik, 0)


def prior_bandwidth(cfg, meta: dict) -> float:
    """The prior's kernel width: --prior-bandwidth, else --prior-bandwidth-from's posterior.json, else the
    posterior's own (posterior.json `meta`), times --prior-bandwidth-scale. A one-particle posterior records
    none (no spread to measure), so it must be stated."""
    if cfg.prior_bandwidth is not None:
        h = cfg.prior_bandwidth
    elif cfg.prior_bandwidth_from:
        h = load_posterior(cfg.prior_bandwidth_from)[1].get("bandwidth")
        if h is None:
            raise BmtptError(f"--prior-bandwidth-from {cfg.prior_bandwidth_from}: that posterior records no bandwidth "
                             "either (it has one particle)")
    elif meta.get("bandwidth") is None:
        raise BmtptError(f"the posterior in {cfg.posterior} has one particle, so it has no kernel width for the prior: "
                         "give --prior-bandwidth H or --prior-bandwidth-from SOURCE_RUN (or --prior-weight 0)")
    else:
        h = meta["bandwidth"]
    return float(h) * cfg.prior_bandwidth_scale


def effective_weight(weight: float, rule: str, target_tokens: int) -> float:
    """lambda_eff: `weight` itself (`fixed`) or divided by the training set's target tokens (`bayes`)."""
    if rule not in WEIGHT_RULES:
        raise BmtptError(f"unknown --prior-weight-rule {rule!r} (choose {', '.join(WEIGHT_RULES)})")
    return weight if rule == "fixed" else weight / max(target_tokens, 1)
