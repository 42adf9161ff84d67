"""SVGD math against hand-written loops, autograd, scipy and a known 2-D Gaussian target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from bmtpt.svgd import (
    function_terms,
    gaussian_log_density,
    kde_log_density,
    mean_pairwise_distance,
    median_bandwidth,
    pairwise_sq_dists,
    svgd_direction,
    svgd_terms,
)


def _median_h(x: np.ndarray) -> float:
    """Median heuristic by hand: numpy.median of ||x_i - x_j||^2 over i < j, divided by log(M + 1)."""
    m = x.shape[0]
    flat = x.reshape(m, -1)
    sq = [float(((flat[i] - flat[j]) ** 2).sum()) for i in range(m) for j in range(i + 1, m)]
    return float(np.median(sq)) / math.log(m + 1)


def _phi_loop(x: np.ndarray, s: np.ndarray, h: float) -> np.ndarray:
    """phi(x_i) = 1/M sum_j [k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i)], k = exp(-||x_j - x_i||^2 / h)."""
    m = x.shape[0]
    out = np.zeros_like(x)
    for i in range(m):
        for j in range(m):
            diff = x[j] - x[i]
            k = math.exp(-float((diff**2).sum()) / h)
            out[i] += k * s[j] + (-2.0 / h) * diff * k
    return out / m


def _random(m: int, seed: int, shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, *shape, generator=g, dtype=torch.float64), torch.randn(m, *shape, generator=g,
                                                                                  dtype=torch.float64)


@pytest.mark.parametrize("m", [2, 3, 4, 6])
def test_direction_matches_double_loop_with_median_heuristic(m):
    x, s = _random(m, seed=m)
    h = _median_h(x.numpy())
    terms = svgd_terms(x, s)
    assert terms.bandwidth == pytest.approx(h, rel=1e-10)
    assert median_bandwidth(pairwise_sq_dists(x)) == pytest.approx(h, rel=1e-10)
    np.testing.assert_allclose(svgd_direction(x, s).numpy(), _phi_loop(x.numpy(), s.numpy(), h), atol=1e-10)


@pytest.mark.parametrize("m", [3, 6])
def test_direction_with_explicit_bandwidth_and_float32(m):
    x, s = _random(m, seed=10 + m, shape=(5, 2))
    phi = svgd_direction(x.float(), s.float(), bandwidth=7.5)
    assert phi.dtype == torch.float32 and phi.shape == x.shape
    np.testing.assert_allclose(phi.numpy(), _phi_loop(x.numpy(), s.numpy(), 7.5), atol=1e-5)


def test_median_of_an_even_number_of_pairs_averages_the_middle_two():
    # 4 points on a line: the 6 squared distances are 1, 4, 9, 9, 16, 25 -> numpy median 9; with
    # 0, 1, 3, 7: 1, 9, 49, 4, 36, 16 -> sorted 1 4 9 16 36 49 -> median (9 + 16) / 2 = 12.5
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert median_bandwidth(pairwise_sq_dists(x)) == pytest.approx(12.5 / math.log(5))


def test_repulsive_term_equals_autograd_of_the_kernel():
    x, s = _random(5, seed=3)
    terms = svgd_terms(x, s)
    h, m = terms.bandwidth, x.shape[0]
    for i in range(m):
        xs = x.clone().requires_grad_(True)
        k = torch.exp(-((xs - x[i]) ** 2).sum(dim=(1, 2)) / h)  # k(x_j, x_i) for every j, x_i held fixed
        k.sum().backward()
        torch.testing.assert_close(terms.repulse[i], xs.grad.sum(0) / m, atol=1e-12, rtol=1e-10)
        drive = sum(k[j].item() * s[j] for j in range(m)) / m
        torch.testing.assert_close(terms.drive[i], drive, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(terms.drive + terms.repulse, svgd_direction(x, s))
    assert terms.direction.shape == x.shape


def test_kernel_and_distances_by_hand():
    x, s = _random(4, seed=5)
    terms = svgd_terms(x, s, bandwidth=3.0)
    flat = x.reshape(4, -1)
    for i in range(4):
        for j in range(4):
            sq = float(((flat[i] - flat[j]) ** 2).sum())
            assert float(terms.sq_dists[i, j]) == pytest.approx(sq, abs=1e-10)
            assert float(terms.kernel[i, j]) == pytest.approx(math.exp(-sq / 3.0), abs=1e-12)
    mean_d = np.mean([math.sqrt(float(((flat[i] - flat[j]) ** 2).sum())) for i in range(4) for j in range(i + 1, 4)])
    assert mean_pairwise_distance(terms.sq_dists) == pytest.approx(mean_d)
    assert mean_pairwise_distance(pairwise_sq_dists(x[:1])) == 0.0


def test_a_single_particle_moves_along_its_score():
    x, s = _random(1, seed=1)
    torch.testing.assert_close(svgd_direction(x, s), s)
    torch.testing.assert_close(svgd_direction(x, s, bandwidth=0.1), s)


def test_coinciding_particles_get_no_repulsion():
    x = torch.ones(3, 2, 2)
    s = torch.randn(3, 2, 2)
    terms = svgd_terms(x, s)
    assert terms.bandwidth == 1.0
    torch.testing.assert_close(terms.repulse, torch.zeros_like(x))
    torch.testing.assert_close(terms.drive, s.mean(0).expand_as(s))


def test_bad_inputs_raise():
    x, s = _random(3, seed=0)
    with pytest.raises(ValueError):
        svgd_direction(x, s[:2])
    with pytest.raises(ValueError):
        svgd_direction(x, s, bandwidth=0.0)


def test_kde_log_density_against_scipy_and_finite_differences():
    g = torch.Generator().manual_seed(7)
    parts = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    theta = torch.randn(3, 2, generator=g, dtype=torch.float64)
    h = 2.3
    sq = ((theta.numpy()[None] - parts.numpy()) ** 2).reshape(5, -1).sum(-1)
    want = logsumexp(-sq / h) - math.log(5)
    t = theta.clone().requires_grad_(True)
    val = kde_log_density(t, parts, h)
    assert val.item() == pytest.approx(want, abs=1e-12)
    val.backward()
    eps = 1e-6
    fd = np.zeros(6)
    for n in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[n] = eps
        e = e.view(3, 2)
        fd[n] = (float(kde_log_density(theta + e, parts, h)) - float(kde_log_density(theta - e, parts, h))) / (2 * eps)
    np.testing.assert_allclose(t.grad.reshape(-1).numpy(), fd, atol=1e-7)
    # far from every particle the log-sum-exp must not underflow to -inf
    assert math.isfinite(float(kde_log_density(theta + 1e3, parts, h)))


def test_gaussian_log_density_by_hand():
    g = torch.Generator().manual_seed(8)
    mean, x = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    want = -float(((x - mean) ** 2).sum()) / (2 * 0.7)
    assert float(gaussian_log_density(x, mean, 0.7)) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("cov", [[[0.5, 0.0], [0.0, 2.0]], [[1.0, 0.6], [0.6, 2.0]]])
def test_svgd_particles_reach_a_known_gaussian(cov):
    mu = np.array([1.0, -2.0])
    cov = np.array(cov)
    prec = torch.tensor(np.linalg.inv(cov))
    mu_t = torch.tensor(mu)
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 3.0  # far away
    for _ in range(600):
        x = x + 0.3 * svgd_direction(x, -(x - mu_t) @ prec)  # score = grad log N(mu, cov)
    got = x.numpy()
    np.testing.assert_allclose(got.mean(0), mu, atol=0.1)
    emp = np.cov(got.T)
    np.testing.assert_allclose(np.diag(emp), np.diag(cov), rtol=0.2)
    assert emp[0, 1] == pytest.approx(cov[0, 1], abs=0.15)


def test_row_mean_kernel_view_against_autograd():
    """The kernel on each particle's row mean: drive = 1/M sum_j k_ji s_j and repulse = 1/M sum_j
    grad_{x_j} k(mean x_j, mean x_i), the latter by autograd through the mean, one pair at a time."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    s = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    h = 0.7
    terms = svgd_terms(x, s, h, view="row-mean")
    for i in range(4):
        drive, rep = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
        for j in range(4):
            xj = x[j].clone().requires_grad_(True)
            k = torch.exp(-((xj.mean(0) - x[i].mean(0)) ** 2).sum() / h)
            (grad,) = torch.autograd.grad(k, xj)
            drive += k.detach() * s[j]
            rep += grad
        torch.testing.assert_close(terms.drive[i], drive / 4)
        torch.testing.assert_close(terms.repulse[i], rep / 4)
    with pytest.raises(ValueError, match="kernel view"):
        svgd_terms(x, s, h, view="pca")


def test_repulsion_schedules_by_hand():
    from bmtpt.svgd import repulsion_weight

    steps = 8
    assert [repulsion_weight("constant", s, steps) for s in range(1, 9)] == [1.0] * 8
    assert [repulsion_weight("anneal", s, steps) for s in range(1, 9)] == [s / 8 for s in range(1, 9)]
    assert [repulsion_weight("cyclic", s, steps) for s in range(1, 9)] == [0.5, 1.0] * 4  # 4 ramps of 2 steps
    assert [repulsion_weight("decay", s, steps) for s in range(1, 9)] == [1 - (s - 1) / 8 for s in range(1, 9)]
    with pytest.raises(ValueError, match="unknown repulsion schedule"):
        repulsion_weight("nope", 1, 8)


def test_function_space_kernel_against_autograd_through_a_nonlinear_map():
    """Kernel on f_i = tanh(W theta_i): drive = 1/M sum_j k(f_j, f_i) s_j; the repulsion, pulled back through
    each particle's Jacobian, is J_i^T (1/M sum_j grad_{f_j} k(f_j, f_i)), built here pair by pair."""
    g = torch.Generator().manual_seed(11)
    theta = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    s = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    w = torch.randn(6, 15, generator=g, dtype=torch.float64) / 3
    fmap = lambda t: torch.tanh(w @ t.reshape(-1))  # noqa: E731
    leaf = theta.clone().requires_grad_(True)
    f = torch.stack([fmap(t) for t in leaf])
    terms = function_terms(f.detach(), s)
    assert terms.bandwidth == pytest.approx(_median_h(f.detach().numpy()))
    (pulled,) = torch.autograd.grad((terms.repulse * f).sum(), leaf)
    for i in range(4):
        drive, r = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
        for j in range(4):
            fj = f[j].detach().clone().requires_grad_(True)
            k = torch.exp(-((fj - f[i].detach()) ** 2).sum() / terms.bandwidth)
            (grad,) = torch.autograd.grad(k, fj)
            drive += k.detach() * s[j]
            r += grad
        jac = torch.autograd.functional.jacobian(fmap, theta[i])  # (6, 3, 5)
        torch.testing.assert_close(terms.drive[i], drive / 4)
        torch.testing.assert_close(pulled[i], torch.einsum("b,bxy->xy", r / 4, jac))


def test_function_space_kernel_on_the_identity_map_is_plain_svgd():
    x, s = _random(5, 3)
    plain, fn = svgd_terms(x, s), function_terms(x.reshape(5, -1), s)
    torch.testing.assert_close(fn.drive, plain.drive)
    torch.testing.assert_close(fn.repulse.reshape(x.shape), plain.repulse)
    assert fn.bandwidth == plain.bandwidth
    with pytest.raises(ValueError, match="must be \\(M, B\\)"):
        function_terms(x, s)


def test_weighted_kde_log_density_against_scipy():
    """log sum_m w_m exp(-d_m^2 / h) with w = softmax(log_weights), via scipy's logsumexp with b = w; equal
    log-weights give the plain KDE."""
    g = torch.Generator().manual_seed(3)
    parts = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    theta = torch.randn(3, 2, generator=g, dtype=torch.float64)
    lw = torch.tensor([0.0, -1.0, 2.0, -0.5], dtype=torch.float64)
    w = np.exp(lw.numpy()) / np.exp(lw.numpy()).sum()
    sq = ((theta.numpy()[None] - parts.numpy()) ** 2).reshape(4, -1).sum(-1)
    assert kde_log_density(theta, parts, 1.7, lw).item() == pytest.approx(logsumexp(-sq / 1.7, b=w), abs=1e-12)
    assert kde_log_density(theta, parts, 1.7, torch.full((4,), 3.0, dtype=torch.float64)).item() == \
        pytest.approx(kde_log_density(theta, parts, 1.7).item(), abs=1e-12)
