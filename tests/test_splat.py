"""Forward splatting against a naive per-pixel loop, exact integer moves and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from nsff_core.model.splat import splat, splat_sum


def naive_splat(values, flow, weights=None, metric=None):
    """Reference: loop over every source pixel and its 4 bilinear corners (float64)."""
    b, c, h, w = values.shape
    num = torch.zeros(b, c, h, w, dtype=torch.float64)
    den = torch.zeros(b, 1, h, w, dtype=torch.float64)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                qx = x + float(flow[n, 0, y, x])
                qy = y + float(flow[n, 1, y, x])
                u = 1.0 if weights is None else float(weights[n, 0, y, x])
                if metric is not None:
                    u *= math.exp(float(metric[n, 0, y, x]))
                x0, y0 = math.floor(qx), math.floor(qy)
                for cy in (y0, y0 + 1):
                    for cx in (x0, x0 + 1):
                        share = max(0.0, 1 - abs(qx - cx)) * max(0.0, 1 - abs(qy - cy))
                        if 0 <= cx < w and 0 <= cy < h and share > 0:
                            num[n, :, cy, cx] += share * u * values[n, :, y, x].double()
                            den[n, 0, cy, cx] += share * u
    out = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
    return out, den


def random_case(seed, b=2, c=3, h=5, w=6, spread=2.5):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    # large enough that many targets fall outside the image
    flow = (torch.rand(b, 2, h, w, generator=g, dtype=torch.float64) * 2 - 1) * spread
    weights = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) + 0.1
    metric = torch.randn(b, 1, h, w, generator=g, dtype=torch.float64) * 3
    return values, flow, weights, metric


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_loop(seed):
    values, flow, weights, metric = random_case(seed)
    ref, den = naive_splat(values, flow)
    assert (den == 0).any() and (den > 0).any()  # some pixels receive nothing
    assert_close(splat(values, flow), ref)
    assert_close(splat(values, flow, weights), naive_splat(values, flow, weights)[0])
    assert_close(
        splat(values, flow, mode="softmax", metric=metric),
        naive_splat(values, flow, metric=metric)[0],
    )
    assert_close(
        splat(values, flow, weights, mode="softmax", metric=metric),
        naive_splat(values, flow, weights, metric)[0],
    )
    ones = torch.ones_like(values[:, :1])
    assert_close(splat_sum(ones, flow), den)
    assert_close(splat(values.float(), flow.float()), ref.float(), atol=1e-5, rtol=1e-5)


def test_softmax_with_extreme_metric_does_not_overflow():
    values, flow, _, metric = random_case(3)
    out = splat(values, flow, mode="softmax", metric=metric * 1000)
    assert torch.isfinite(out).all()
    # metrics differing by 1000 still give an average where anything landed
    assert ((out != 0) == (naive_splat(values, flow)[1] > 0).expand_as(out)).all()


def test_integer_flow_moves_pixels_exactly():
    values = torch.arange(2 * 4 * 5, dtype=torch.float32).view(1, 2, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0] = 1.0  # one column right
    flow[:, 1] = -2.0  # two rows up
    out = splat(values, flow)
    expected = torch.zeros_like(values)
    expected[:, :, :2, 1:] = values[:, :, 2:, :-1]
    assert torch.equal(out, expected)
    assert torch.equal(splat(values, torch.zeros_like(flow)), values)


def test_collisions_average_and_softmax_prefers_high_metric():
    values = torch.tensor([[[[1.0, 3.0]]]])
    flow = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # both land on pixel (0, 1)
    assert_close(splat(values, flow), torch.tensor([[[[0.0, 2.0]]]]))
    metric = torch.tensor([[[[20.0, 0.0]]]])
    assert_close(
        splat(values, flow, mode="softmax", metric=metric)[0, 0, 0, 1],
        torch.tensor(1.0),
        atol=1e-6,
        rtol=0,
    )


def test_gradcheck():
    values, flow, weights, metric = random_case(5, b=1, c=2, h=3, w=4, spread=1.2)
    for v in (values, flow, weights, metric):
        v.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, f, u: splat(v, f, u), (values, flow, weights))
    assert torch.autograd.gradcheck(
        lambda v, f, m: splat(v, f, mode="softmax", metric=m), (values, flow, metric)
    )


def test_argument_checks():
    values = torch.zeros(1, 1, 2, 2)
    flow = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError):
        splat(values, flow, mode="softmax")
    with pytest.raises(ValueError):
        splat(values, flow, metric=torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError):
        splat(values, flow[:, :, :1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    values, flow, weights, metric = random_case(7)
    cpu = splat(values, flow, weights, mode="softmax", metric=metric)
    gpu = splat(values.cuda(), flow.cuda(), weights.cuda(), mode="softmax", metric=metric.cuda())
    assert_close(gpu.cpu(), cpu)
