"""The divergence guard: a non-finite loss or gradient stops training with a clear error, no
checkpoint with NaN/inf is ever written, ``train.on_divergence: retry``, and NaN sample
positions in the planes field.

Faults are injected in-process: ``nsff_core.model.losses.color_loss`` is replaced by a version that
returns NaN (or passes NaN gradients back) from its k-th call on; training calls it once per
step, so call k is step k - 1.
"""

from __future__ import annotations

import json

import pytest
import torch

from nsff_core.config import TrainConfig
from nsff_core.errors import StageError
from nsff_core.model import losses
from nsff_core.model.checkpoint import load_checkpoint

from .test_train import TINY, _rows

pytestmark = pytest.mark.stage

#: checkpoints after steps 2, 4, ...; a fault at call 4 is step 3
CFG = dict(TINY, max_steps=6, checkpoint_every=2, log_every=1)


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _fault(monkeypatch, kind: str, first: int, last: int | None = None) -> None:
    """From the ``first``-th call of color_loss to the ``last``-th (None: for ever): a NaN loss
    (``kind="loss"``) or a finite loss with NaN gradients (``kind="grad"``)."""
    real = losses.color_loss
    calls = [0]

    def color_loss(rgb, target):
        calls[0] += 1
        value = real(rgb, target)
        if calls[0] >= first and (last is None or calls[0] <= last):
            return value * float("nan") if kind == "loss" else _NanGrad.apply(value)
        return value

    monkeypatch.setattr(losses, "color_loss", color_loss)


def test_a_nan_loss_stops_training_with_the_step_and_term(tiny_scene_dir, tmp_path, monkeypatch):
    from nsff_core.workflow.stages.train import train_scene

    _fault(monkeypatch, "loss", first=4)
    out = tmp_path / "train"
    with pytest.raises(StageError) as info:
        train_scene(tiny_scene_dir, out, TrainConfig(**CFG), scene="tiny")
    msg = str(info.value)
    assert "scene 'tiny', rule 'train'" in msg
    assert "diverged at step 3: loss term 'color' is nan" in msg
    for advice in ("train.lr", "train.on_divergence: retry"):
        assert advice in msg
    # nothing that looks finished; the last checkpoint before the fault is kept and finite
    assert not (out / "last.ckpt").exists()
    kept = load_checkpoint(out / "running" / "last.ckpt")  # raises on NaN/inf
    assert kept["global_step"] == 2
    facts = json.loads((out / "running" / "config.json").read_text())
    assert facts["divergence"] == [
        {"step": 3, "cause": "loss term 'color' is nan", "lr_scale": 1.0, "action": "stop"}
    ]


def test_a_nan_gradient_is_never_applied(tiny_scene_dir, tmp_path, monkeypatch):
    from nsff_core.workflow.stages.train import train_scene

    _fault(monkeypatch, "grad", first=2)  # step 1: a finite loss, NaN gradients
    out = tmp_path / "train"
    with pytest.raises(StageError, match=r"diverged at step 1: the gradient of \w+_field\."):
        train_scene(tiny_scene_dir, out, TrainConfig(**dict(CFG, checkpoint_every=1)), "tiny")
    kept = load_checkpoint(out / "running" / "last.ckpt")
    assert kept["global_step"] == 1
    rows = _rows(out / "running" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0], "the diverged step is not logged as done"


def test_retry_resumes_once_at_half_the_learning_rates(tiny_scene_dir, tmp_path, monkeypatch):
    from nsff_core.workflow.stages.train import train_scene

    _fault(monkeypatch, "loss", first=4, last=4)  # one bad step (3)
    out = tmp_path / "train"
    cfg = TrainConfig(**dict(CFG, on_divergence="retry"))
    last = train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    facts = json.loads((out / "config.json").read_text())
    assert facts["lr_scale"] == 0.5
    assert facts["divergence"] == [
        {
            "step": 3,
            "cause": "loss term 'color' is nan",
            "lr_scale": 1.0,
            "action": "retry",
            "resumed_from_step": 2,
        }
    ]
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 6 and ckpt["lr_scale"] == 0.5
    assert ckpt["lr_schedulers"][0]["base_lrs"] == pytest.approx([cfg.lr / 2])
    # every step once: 0-2 from the first attempt, 3-5 from the retry
    rows = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert all(float(r["loss/total"]) == float(r["loss/total"]) for r in rows)

    # a rerun with a larger budget resumes the run and keeps the halved learning rates
    last = train_scene(tiny_scene_dir, out, TrainConfig(**dict(CFG, max_steps=8)), "tiny")
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 8
    assert ckpt["lr_schedulers"][0]["base_lrs"] == pytest.approx([cfg.lr / 2])
    assert json.loads((out / "config.json").read_text())["lr_scale"] == 0.5
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == list(range(8))


def test_a_retry_that_diverges_again_stops_and_says_so(tiny_scene_dir, tmp_path, monkeypatch):
    from nsff_core.workflow.stages.train import train_scene

    _fault(monkeypatch, "loss", first=4)
    out = tmp_path / "train"
    cfg = TrainConfig(**dict(CFG, on_divergence="retry"))
    with pytest.raises(StageError, match="retried once from step 2 at half the learning rates"):
        train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    facts = json.loads((out / "running" / "config.json").read_text())
    assert [r["action"] for r in facts["divergence"]] == ["retry", "stop"]
    assert facts["lr_scale"] == 0.5
    # the same settings again: the run resumes at half the rates and does not retry a second time
    with pytest.raises(StageError, match="retried once"):
        train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    facts = json.loads((out / "running" / "config.json").read_text())
    assert [r["action"] for r in facts["divergence"]] == ["retry", "stop", "stop"]
    assert facts["divergence"][-1]["lr_scale"] == 0.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_position_never_reaches_grid_sample(bad):
    """NaN positions used to reach grid_sample's CPU backward, which wrote out of bounds
    (SIGSEGV). Now the lookup is finite and the planes get finite gradients."""
    from nsff_core.model.fields_planes import PlaneDynamicField, PlaneFieldConfig, PlaneStaticField

    torch.manual_seed(0)
    cfg = PlaneFieldConfig(base_resolution=4, levels=2, dynamic_levels=2, channels=4, hidden=8)
    static, dynamic = PlaneStaticField(cfg), PlaneDynamicField(cfg, num_frames=3)
    x = torch.rand(64, 8, 3) * 2 - 1
    x[::3, :, 1] = bad
    x[5, 2] = bad
    d = torch.nn.functional.normalize(torch.randn(64, 1, 3), dim=-1)
    s = static(x, d)
    y = dynamic(x, torch.full((64, 8), 1))
    total = s.raw_sigma.sum() + s.rgb.sum() + y.raw_sigma.sum() + y.scene_flow_fw.sum()
    assert torch.isfinite(total)
    total.backward()
    for p in [*static.grid_parameters(), *dynamic.grid_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()


#: imported by the DDP workers (their PYTHONPATH): rank $NSFF_TEST_NAN_RANK gets a NaN colour
#: loss from call $NSFF_TEST_NAN_CALL on; every other process is untouched
NAN_HOOK = """\
import os

if os.environ.get("RANK") == os.environ.get("NSFF_TEST_NAN_RANK"):
    from nsff_core.model import losses

    _real, _calls = losses.color_loss, [0]

    def _color_loss(rgb, target):
        _calls[0] += 1
        value = _real(rgb, target)
        return value * float("nan") if _calls[0] >= int(os.environ["NSFF_TEST_NAN_CALL"]) else value

    losses.color_loss = _color_loss
"""


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)
@pytest.mark.timeout(600)
def test_ddp_ranks_stop_together_when_one_rank_diverges(tiny_scene_dir, tmp_path, monkeypatch):
    """A NaN on rank 1 only: the loss means both ranks log are NaN, so both stop at the same
    step (no rank waits for ever in a collective) and the parent reports the StageError."""
    from nsff_core.workflow.stages.train import train_scene

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NAN_HOOK)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("NSFF_TEST_NAN_RANK", "1")
    monkeypatch.setenv("NSFF_TEST_NAN_CALL", "4")  # step 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes (gloo) on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "train"
    with pytest.raises(StageError, match="diverged at step 3: loss term 'color' is nan"):
        train_scene(tiny_scene_dir, out, TrainConfig(**dict(CFG, gpus=2)), scene="tiny")
    assert load_checkpoint(out / "running" / "last.ckpt")["global_step"] == 2
    assert not list((out / "running").glob(".worker-error-*")), "the hand-over files are read"


class _Module(torch.nn.Module):
    """A module with two parameters whose gradients are set by hand, and finite step losses."""

    def __init__(self, grads: list[list[float]]) -> None:
        super().__init__()
        self.ws = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(len(g))) for g in grads)
        for w, g in zip(self.ws, grads, strict=True):
            w.grad = torch.tensor(g)
        self.step_losses = {"color": torch.tensor(0.5)}


@pytest.mark.parametrize(
    "grads, diverged",
    [
        ([[1.0, -2.0], [3.0]], False),
        # every value finite, but their float32 sum overflows: not a divergence
        ([[3e38, 3e38], [3e38]], False),
        ([[1.0, float("inf")], [3.0]], True),
        ([[float("inf"), float("-inf")], [3.0]], True),  # a sum of NaN
        ([[1.0, 2.0], [float("nan")]], True),
    ],
)
def test_the_guard_stops_exactly_on_a_non_finite_gradient_value(grads, diverged):
    from types import SimpleNamespace

    from nsff_core.workflow.stages.train import Diverged, DivergenceGuard

    module = _Module(grads)
    trainer = SimpleNamespace(global_step=7)
    if diverged:
        with pytest.raises(Diverged, match=r"gradient of ws\.\d is not finite"):
            DivergenceGuard(1).on_before_optimizer_step(trainer, module, None)
    else:
        DivergenceGuard(1).on_before_optimizer_step(trainer, module, None)
