"""PSNR, SSIM (the real one, not nsff_pl's (1 + SSIM) / 2) and LPIPS (offline behaviour)."""

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from nsff_core.model.metrics import (
    LpipsUnavailable,
    build_lpips,
    lpips,
    lpips_weight_files,
    psnr,
    ssim,
    ssim_map,
)
from nsff_core.priors import weights as W
from nsff_core.workflow.stages import evaluate
from nsff_core.workflow.stages.evaluate import load_lpips, lpips_or_nan


def _rand(shape, seed):
    return np.random.default_rng(seed).random(shape)


def _ssim_reference(x, y, full=False):
    """numpy/scipy SSIM as skimage computes it (gaussian_weights, sigma 1.5, population cov).

    ``truncate=3.5`` gives radius int(3.5 * 1.5 + 0.5) = 5, i.e. an 11x11 window. Returns the
    per-pixel channel-mean map (``full``) or the mean over the 5-pixel-cropped maps.
    """
    c1, c2 = 0.01**2, 0.03**2
    maps = []
    for ch in range(x.shape[-1]):
        a, b = x[..., ch], y[..., ch]

        def filt(img):
            return gaussian_filter(img, sigma=1.5, truncate=3.5, mode="reflect")

        ux, uy = filt(a), filt(b)
        vx, vy, vxy = filt(a * a) - ux**2, filt(b * b) - uy**2, filt(a * b) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        maps.append(s)
    if full:
        return np.mean(maps, axis=0)
    return float(np.mean([s[5:-5, 5:-5].mean() for s in maps]))


# ------------------------------------------- PSNR --------------------------------------------


def test_psnr_hand_case():
    target = np.zeros((4, 5, 3))
    pred = target + 0.1  # MSE 0.01 -> 20 dB
    assert psnr(pred, target) == pytest.approx(20.0, abs=1e-9)
    assert psnr(torch.tensor(pred)[None], torch.tensor(target)[None]) == pytest.approx(20.0)
    assert psnr(target, target) == math.inf


def test_psnr_masked():
    target = np.zeros((4, 4, 3))
    pred = target.copy()
    pred[:2] = 0.1  # error only in the top half
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    assert psnr(pred, target, mask) == pytest.approx(20.0)
    assert psnr(pred, target, ~mask) == math.inf
    assert psnr(pred, target) == pytest.approx(-10 * np.log10(0.005))
    assert math.isnan(psnr(pred, target, np.zeros((4, 4), bool)))


# ------------------------------------------- SSIM --------------------------------------------


def test_ssim_identical_is_one():
    x = _rand((24, 30, 3), 0)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(ssim_map(x, x), torch.ones(24, 30))


def test_ssim_constant_offset_hand_case():
    # Constant images: variances and covariance are 0, only the luminance term is left.
    a, c = 0.3, 0.2
    target = np.full((16, 16, 3), a)
    expected = (2 * a * (a + c) + 0.01**2) / (a**2 + (a + c) ** 2 + 0.01**2)
    assert ssim(target + c, target) == pytest.approx(expected, rel=1e-12)
    # Textured image + offset: contrast-structure term is exactly 1, luminance from local means.
    x = 0.8 * _rand((20, 20, 1), 1)
    mu = gaussian_filter(x[..., 0], sigma=1.5, truncate=3.5)
    lum = (2 * mu * (mu + c) + 1e-4) / (mu**2 + (mu + c) ** 2 + 1e-4)
    assert ssim(x + c, x) == pytest.approx(lum[5:-5, 5:-5].mean(), abs=1e-10)


def test_ssim_matches_scipy_reference():
    x = _rand((40, 48, 3), 2)
    y = np.clip(x + 0.2 * _rand((40, 48, 3), 3) - 0.1, 0, 1)
    assert ssim(x, y) == pytest.approx(_ssim_reference(x, y), abs=1e-4)
    assert ssim(x, y) == pytest.approx(_ssim_reference(x, y), abs=1e-10)  # float64 path
    ref_map = _ssim_reference(x, y, full=True)
    np.testing.assert_allclose(ssim_map(x, y).numpy(), ref_map, atol=1e-5)
    # Masked: mean of the full-size map over the mask, border pixels included.
    mask = _rand((40, 48), 4) > 0.5
    assert ssim(x, y, mask) == pytest.approx(ref_map[mask].mean(), abs=1e-6)
    assert math.isnan(ssim(x, y, np.zeros((40, 48), bool)))
    # Batch: pooled mean, map keeps the batch axis.
    xb, yb = torch.tensor(np.stack([x, y])), torch.tensor(np.stack([y, x]))
    assert ssim(xb, yb) == pytest.approx(ssim(x, y), abs=1e-12)
    assert ssim_map(xb, yb).shape == (2, 40, 48)


def test_ssim_is_not_the_inflated_kornia_convention():
    x = _rand((32, 32, 3), 5)
    s = ssim(x, 1.0 - x)  # negatively correlated: real SSIM < 0, (1 + SSIM) / 2 would be > 0
    assert s < 0.0
    assert s < 0.5 and (1 + s) / 2 > s
    assert s == pytest.approx(_ssim_reference(x, 1.0 - x), abs=1e-4)


def test_ssim_rejects_too_small_images():
    with pytest.raises(ValueError, match="too small"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


# ------------------------------------------- LPIPS -------------------------------------------


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An environment where no LPIPS weight file can be found."""
    monkeypatch.setenv("NSFF_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(evaluate, "_LPIPS_WARNED", False)
    return tmp_path


def test_lpips_unavailable_names_missing_files(no_weights):
    x = _rand((64, 64, 3), 6)
    with pytest.raises(LpipsUnavailable) as err:
        lpips(x, x, model=load_lpips())
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "alex.pth" in msg
    assert "NSFF_WEIGHTS_DIR" in msg and str(no_weights / "weights") in msg
    with pytest.raises(ValueError, match="AlexNet"):
        lpips_weight_files(net="vgg")


def test_lpips_or_nan_offline_warns_once(no_weights, caplog):
    x = _rand((64, 64, 3), 7)
    with caplog.at_level(logging.WARNING, logger="nsff_core.workflow.stages.evaluate"):
        assert math.isnan(lpips_or_nan(x, x))
        assert math.isnan(lpips_or_nan(x, 1 - x))
    assert len([r for r in caplog.records if "LPIPS unavailable" in r.getMessage()]) == 1


def _save_lpips_files(wdir, seed=1):
    """Random LPIPS weights saved under the file names of the real ones; the module."""
    wdir.mkdir(exist_ok=True)
    ref = build_lpips(random_init=True, seed=seed)
    torch.save(
        {f"features.{k}": v for k, v in ref.net.state_dict().items()},
        wdir / "alexnet-owt-7be5be79.pth",
    )
    torch.save(
        {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}, wdir / "alex.pth"
    )
    return ref


@pytest.fixture
def unpinned_alexnet(monkeypatch):
    """Test weights cannot have torchvision's sha256 prefix: drop it from the registry entry."""
    e = W.REGISTRY["alexnet"]
    monkeypatch.setitem(W.REGISTRY, "alexnet", dataclasses.replace(e, sha256_prefix=None))
    monkeypatch.setattr(evaluate, "_LPIPS_MODELS", {})


def test_lpips_loads_local_files(no_weights, unpinned_alexnet):
    wdir = no_weights / "weights"
    ref = _save_lpips_files(wdir)
    assert lpips_weight_files() == (str(wdir / "alexnet-owt-7be5be79.pth"), str(wdir / "alex.pth"))
    x, y = _rand((64, 64, 3), 8), _rand((64, 64, 3), 9)
    assert lpips(x, y, model=load_lpips()) == pytest.approx(lpips(x, y, model=ref), rel=1e-6)


def test_lpips_refuses_a_backbone_that_is_not_torchvisions(no_weights, monkeypatch):
    """Before: any file named alexnet-owt-7be5be79.pth was loaded unchecked."""
    monkeypatch.setattr(evaluate, "_LPIPS_MODELS", {})
    wdir = no_weights / "weights"
    _save_lpips_files(wdir)
    with pytest.raises(W.WeightsMismatch, match="starting with 7be5be79") as info:
        load_lpips()
    assert str(wdir / "alexnet-owt-7be5be79.pth") in str(info.value)
    assert info.value.stage == "evaluate"


def test_lpips_files_are_recorded_then_must_not_change(no_weights, unpinned_alexnet):
    """Before: the LPIPS files were loaded without any hash check."""
    wdir = no_weights / "weights"
    _save_lpips_files(wdir, seed=1)
    x, y = _rand((64, 64, 3), 8), _rand((64, 64, 3), 9)
    lpips(x, y, model=load_lpips())
    record = W.read_record(wdir)
    assert sorted(record) == ["alex.pth", "alexnet-owt-7be5be79.pth"]
    assert record["alex.pth"]["entry"] == "lpips_alex"
    evaluate._LPIPS_MODELS.clear()
    _save_lpips_files(wdir, seed=2)  # other weights under the same names
    with pytest.raises(W.WeightsMismatch, match="corrupted or replaced") as info:
        load_lpips()
    assert record["alexnet-owt-7be5be79.pth"]["sha256"] in str(info.value)


def test_lpips_random_weights_properties():
    model = build_lpips(random_init=True)
    x, y = _rand((64, 80, 3), 10), _rand((64, 80, 3), 11)
    assert lpips(x, x, model=model) == pytest.approx(0.0, abs=1e-12)
    d = lpips(x, y, model=model)
    assert math.isfinite(d) and d > 0
    assert lpips(x, np.clip(x + 0.02, 0, 1), model=model) < d  # small change, small distance
    mask = np.zeros((64, 80), bool)
    mask[16:48, 20:60] = True
    dm = lpips(x, y, mask, model=model)
    assert math.isfinite(dm) and dm > 0
    assert math.isnan(lpips(x, y, np.zeros((64, 80), bool), model=model))
    assert lpips(torch.tensor(np.stack([x, y])), torch.tensor(np.stack([x, y])), model=model) == 0
    with pytest.raises(ValueError, match="random_init"):
        build_lpips()


def test_lpips_backbone_matches_torchvision_alexnet_layout():
    from torchvision.models import alexnet

    with torch.device("meta"):  # no weight initialisation, no download
        tv = alexnet(weights=None).state_dict()
    ours = build_lpips(random_init=True).net.state_dict()
    tv_features = {k.removeprefix("features."): v.shape for k, v in tv.items() if "features" in k}
    assert {k: v.shape for k, v in ours.items()} == tv_features
