"""Device-resident training (train.device_resident): the batches drawn where the model trains,
with FrameSampler's distribution and a checkpointed stream; the masked loss terms without
data-dependent shapes; the deferred divergence guard; the schedule per ray; train.compile.

Everything here runs on the CPU: ``device_resident: device`` without CUDA draws on the CPU with
the same code as on a GPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nsff_core.config import TrainConfig
from nsff_core.errors import StageError
from nsff_core.model import losses as L
from nsff_core.model.checkpoint import load_checkpoint
from nsff_core.model.data import (
    DeviceFrameSampler,
    FrameSampler,
    SamplerConfig,
    exclusion_window,
    grow_mask,
    make_batch,
    scene_data_from_arrays,
)

from .test_divergence import _fault
from .test_train import TINY, _rows


def _scene(n=12, h=9, w=16, seed=0, dynamic=None):
    """A small SceneData of random content (priors unused by the sampler tests)."""
    g = np.random.default_rng(seed)
    rgb = g.random((n, h, w, 3), dtype=np.float32)
    flow = g.normal(size=(n - 1, h, w, 2)).astype(np.float32)
    ok = g.random((n - 1, h, w)) > 0.3
    dyn = np.zeros((n, h, w), bool) if dynamic is None else dynamic
    K = np.array([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]])
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 0.3, n)
    disp = g.random((n, h, w), dtype=np.float32) + 0.5
    return scene_data_from_arrays(rgb, disp, flow, flow, ok, ok, dyn, K, c2w, 2.0)


def _draw(sampler, data, steps):
    frames, pixels = [], []
    for _ in range(steps):
        b = sampler.next_batch(data)
        frames.append(int(b.t[0]))
        pixels.append(b.pixel.clone())
    return frames, pixels


def test_device_frames_follow_the_exclusion_window_and_are_uniform_among_the_rest():
    data = _scene()
    s = DeviceFrameSampler(data, SamplerConfig(batch_size=8, seed=3), "cpu")
    frames, _ = _draw(s, data, 3000)
    window = exclusion_window(12)
    assert window == 2
    steps = np.abs(np.diff(frames))
    assert steps.min() > window, "never within the window of the previous frame"
    counts = np.bincount(frames, minlength=12)
    # every frame drawn; the host sampler's frequencies over the same number of draws
    host = FrameSampler(12, data.hw, 8, seed=3)
    hf = [host.next_frame() for _ in range(3000)]
    hcounts = np.bincount(hf, minlength=12)
    assert counts.min() > 0
    assert np.abs(counts - hcounts).max() < 0.35 * hcounts.mean(), (counts, hcounts)
    # given the previous frame, the next one is uniform among the allowed: frame 0 follows
    # frame 6 about as often as frame 9 does
    after6 = [b for a, b in zip(frames, frames[1:], strict=False) if a == 6]
    c = np.bincount(after6, minlength=12)
    assert c[4:9].sum() == 0 and c[0] > 0 and c[11] > 0
    assert c[[0, 1, 2, 3, 9, 10, 11]].min() > 0.4 * c[[0, 1, 2, 3, 9, 10, 11]].mean()


def test_device_batches_hold_the_rays_and_targets_of_their_pixels():
    data = _scene()
    s = DeviceFrameSampler(data, SamplerConfig(batch_size=32, seed=0), "cpu")
    for _ in range(3):
        b = s.next_batch(data)
        t = int(b.t[0])
        assert (b.t == t).all()
        ref = make_batch(data, t, b.pixel)
        for name, value in ref.__dict__.items():
            got = getattr(b, name)
            if value.is_floating_point():
                torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6, msg=name)
            else:
                assert torch.equal(got, value), name


def test_device_mover_pixels_come_first_and_frames_without_a_mask_draw_uniformly():
    n, h, w = 6, 20, 30
    dyn = np.zeros((n, h, w), bool)
    dyn[1:, 8:11, 12:15] = True  # frame 0 has no mover
    data = _scene(n, h, w, dynamic=dyn)
    s = DeviceFrameSampler(data, SamplerConfig(batch_size=40, seed=1, dynamic_share=0.25), "cpu")
    assert s.num_dynamic == 10
    grown = grow_mask(torch.from_numpy(dyn), 4).reshape(n, -1)
    seen_empty = False
    for _ in range(60):
        b = s.next_batch(data)
        t = int(b.t[0])
        in_mask = grown[t][b.pixel]
        if t == 0:
            seen_empty = True
            assert not in_mask.any() or in_mask.float().mean() < 0.5
        else:
            assert in_mask[:10].all(), "the first share of the batch is in the grown mask"
            assert in_mask[10:].float().mean() < 0.6
    assert seen_empty


def test_device_hard_sampling_draws_pixels_in_proportion_to_their_weights():
    data = _scene(4, 4, 5)
    s = DeviceFrameSampler(data, SamplerConfig(batch_size=20000, seed=2), "cpu")
    weights = torch.zeros(4, 20)
    weights[:, 3] = 1.0
    weights[:, 17] = 3.0
    s.set_weights(weights)
    b = s.next_batch(data)
    counts = torch.bincount(b.pixel, minlength=20)
    assert counts.sum() == 20000 and counts[3] + counts[17] == 20000
    assert abs(counts[17] / counts[3] - 3.0) < 0.2
    s.set_weights(None)
    assert torch.bincount(s.next_batch(data).pixel, minlength=20).min() > 0


def test_the_device_stream_resumes_from_its_state_and_refuses_a_host_state():
    data = _scene()
    cfg = SamplerConfig(batch_size=16, seed=5, dynamic_share=0.0)
    a = DeviceFrameSampler(data, cfg, "cpu")
    _draw(a, data, 7)
    state = a.state()
    want = _draw(a, data, 5)
    b = DeviceFrameSampler(data, cfg, "cpu")
    assert b.load_state(state)
    got = _draw(b, data, 5)
    assert got[0] == want[0]
    assert all(torch.equal(x, y) for x, y in zip(got[1], want[1], strict=True))
    host = FrameSampler(12, data.hw, 16, seed=5)
    assert not b.load_state(host.state()) and not host.load_state(state)


def _disparity_by_indexing(depth, disp, keep):
    """The depth-prior term on the kept rays selected by indexing (the reference)."""
    return L.disparity_loss(depth[keep], disp[keep])


@pytest.mark.parametrize("kept", [16, 17, 40, 64])
def test_masked_disparity_term_equals_the_term_on_the_kept_rays(kept):
    g = torch.Generator().manual_seed(kept)
    depth = torch.rand(64, generator=g, dtype=torch.float64, requires_grad=True)
    disp = torch.rand(64, generator=g, dtype=torch.float64)
    keep = torch.zeros(64, dtype=torch.bool)
    keep[torch.randperm(64, generator=g)[:kept]] = True
    got = L.disparity_loss(depth, disp, keep=keep)
    want = _disparity_by_indexing(depth, disp, keep)
    torch.testing.assert_close(got, want)
    (g1,) = torch.autograd.grad(got, depth)
    (g2,) = torch.autograd.grad(_disparity_by_indexing(depth, disp, keep), depth)
    torch.testing.assert_close(g1, g2)
    assert (g1[~keep] == 0).all()


def test_masked_terms_ignore_nan_rows_and_give_zero_below_the_minimum():
    depth = torch.rand(40, dtype=torch.float64)
    depth[5] = float("nan")
    depth.requires_grad_(True)
    keep = torch.ones(40, dtype=torch.bool)
    keep[5] = False
    loss = L.disparity_loss(depth, torch.rand(40, dtype=torch.float64), keep=keep)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(depth.grad).all()
    few = torch.zeros(40, dtype=torch.bool)
    few[:15] = True
    assert float(L.disparity_loss(torch.rand(40), torch.rand(40), keep=few)) == 0.0
    # temporal smoothness over the valid rays only, NaN in the others
    X = torch.zeros(3, 20, 3)
    X_fw = torch.ones(3, 20, 3)
    X_fw[1] = float("nan")
    valid = torch.tensor([True, False, True])
    assert float(L.temporal_smoothness(X, X_fw, torch.zeros(3, 20, 3), valid)) == 1.0
    assert float(L.temporal_smoothness(X, X_fw, X, torch.zeros(3, dtype=torch.bool))) == 0.0


def test_an_epoch_is_the_same_rays_at_any_batch_size():
    from nsff_core.workflow.stages.train import steps_per_epoch

    scene = SimpleNamespace(num_frames=30, hw=(288, 512))
    spe = {b: steps_per_epoch(TrainConfig(batch_size=b), scene) for b in (512, 1024, 4096, 8192)}
    assert spe == {512: 4423, 1024: 2212, 4096: 553, 8192: 276}  # 4,423 x 512 rays
    assert steps_per_epoch(TrainConfig(batch_size=4096, epoch_rays=40960), scene) == 10
    # an explicit step count wins
    assert steps_per_epoch(TrainConfig(batch_size=4096, steps_per_epoch=7), scene) == 7


DEVICE = dict(TINY, device_resident="device")


def _job(run_dir, steps):
    """What the training function needs of a run besides the data and the settings."""
    return {
        "run_dir": str(run_dir),
        "steps_per_epoch": 10,
        "max_steps": steps,
        "resume": None,
        "scene": "tiny",
    }


def test_device_resident_training_runs_logs_every_log_every_steps_and_resumes(
    tiny_scene_dir, tmp_path
):
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    cfg = TrainConfig(**DEVICE, max_steps=4, log_every=2, checkpoint_every=2)
    last = train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 4
    assert ckpt["pixel_sampler"]["kind"] == "device"
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is True
    steps = [int(r["step"]) for r in _rows(out / "metrics.csv")]
    assert steps == [1, 3], "the CSV log reads the device every log_every steps"
    # resumed: the stream continues from the checkpoint's state
    train_scene(tiny_scene_dir, out, TrainConfig(**{**cfg.__dict__, "max_steps": 6}), scene="tiny")
    assert load_checkpoint(last)["global_step"] == 6


def test_the_deferred_guard_skips_the_bad_update_and_names_its_step(
    tiny_scene_dir, tmp_path, monkeypatch
):
    from nsff_core.workflow.stages.train import train_scene

    _fault(monkeypatch, "loss", first=4)  # step 3
    out = tmp_path / "train"
    cfg = TrainConfig(**DEVICE, max_steps=8, log_every=4, checkpoint_every=4)
    with pytest.raises(StageError) as info:
        train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    msg = str(info.value)
    assert "diverged at step 3: loss term 'color' is not finite (the update was skipped)" in msg
    facts = json.loads((out / "running" / "config.json").read_text())
    assert facts["divergence"][0]["step"] == 3
    # the checkpoint written at step 4 (after the check) does not exist; none holds NaN
    for path in (out / "running").glob("*.ckpt"):
        load_checkpoint(path)


def test_the_deferred_guard_leaves_the_weights_finite_under_a_nan_gradient(
    tiny_scene_dir, tmp_path, monkeypatch
):
    import pytorch_lightning as pl

    from nsff_core.workflow.stages.scene import load_scene
    from nsff_core.workflow.stages.train import Diverged, DivergenceGuard, _fit

    captured = {}

    class Keep(pl.Callback):
        def on_train_start(self, trainer, module):
            captured["system"] = module

    _fault(monkeypatch, "grad", first=2, last=2)  # step 1 only
    data = load_scene(tiny_scene_dir, scene="tiny")
    cfg = TrainConfig(**DEVICE, max_steps=4, log_every=4, checkpoint_every=100)
    job = _job(tmp_path, 4)
    with pytest.raises(Diverged) as info:
        _fit(data, cfg, job, callbacks=[Keep()])
    assert info.value.step == 1 and "gradient" in info.value.what
    system = captured["system"]
    assert all(torch.isfinite(p).all() for p in system.parameters())
    assert DivergenceGuard(1).every == 1


def test_compiled_fields_give_the_eager_step(tiny_scene_dir):
    """train.compile: one training step's loss and gradients through torch.compile (the
    aot_eager backend: the graph capture and autograd of the compiled path, no C compiler)
    match the eager ones."""
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.system import NSFFSystem
    from nsff_core.workflow.stages.scene import load_scene
    from nsff_core.workflow.stages.train import compile_system

    data = load_scene(tiny_scene_dir, scene="tiny")
    cfg = TrainConfig(
        field="planes",
        grid_levels=2,
        grid_channels=4,
        grid_hidden=16,
        num_samples=8,
        batch_size=64,
        noise_std=0.0,
    )
    meta = SceneMeta(data.num_frames, data.K, data.c2w, hw=data.hw)
    batch = make_batch(data, 5, torch.arange(0, 64 * 37, 37))
    results = []
    for what in ("none", "fields", "render"):
        torch.manual_seed(0)
        system = NSFFSystem(cfg, meta, 10)
        compile_system(system, what, backend="aot_eager")
        out = system.render(batch.origins, batch.dirs, batch.t, training=True)
        loss = L.color_loss(out.image.rgb, batch.rgb) + out.image.depth.mean()
        grads = torch.autograd.grad(loss, list(system.parameters()), allow_unused=True)
        results.append((loss.detach(), grads))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-4, atol=1e-5)
        for g, g0 in zip(grads, results[0][1], strict=True):
            if g0 is not None:
                torch.testing.assert_close(g, g0, rtol=1e-3, atol=1e-5)
    with pytest.raises(Exception, match="none, fields or render"):
        compile_system(NSFFSystem(cfg, meta, 10), "all")


def test_the_compositing_product_matches_torch_and_survives_opaque_samples():
    """render._exclusive_cumprod: torch.cumprod's values and gradients bit for bit on positive
    factors (its own backward, which needs no zero test and so no GPU sync), finite gradients
    where a factor is 0 (an opaque sample)."""
    from nsff_core.model.render import _exclusive_cumprod

    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 16, generator=g).requires_grad_(True)
    w = torch.randn(40, 16, generator=g)
    (_exclusive_cumprod(x) * w).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    ref = torch.cumprod(torch.cat([torch.ones_like(x[:, :1]), x[:, :-1]], -1), -1)
    (ref * w).sum().backward()
    assert torch.equal(_exclusive_cumprod(x), ref) and torch.equal(ours, x.grad)
    x64 = torch.rand(3, 6, dtype=torch.float64, generator=g).add(0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(_exclusive_cumprod, (x64,))
    opaque = torch.rand(4, 8, generator=g)
    opaque[:, 3] = 0.0
    opaque.requires_grad_(True)
    (_exclusive_cumprod(opaque) * torch.randn(4, 8, generator=g)).sum().backward()
    assert torch.isfinite(opaque.grad).all()
    assert (_exclusive_cumprod(opaque)[:, 4:] < 1e-9).all()


def test_device_resident_hard_sampling_hands_the_weights_to_the_device_sampler(
    tiny_scene_dir, tmp_path
):
    import pytorch_lightning as pl

    from nsff_core.workflow.stages.scene import load_scene
    from nsff_core.workflow.stages.train import _fit

    seen = {}

    class Look(pl.Callback):
        def on_train_end(self, trainer, module):
            seen["cdf"] = module.pixel_sampler.cdf
            seen["weights"] = module.hard_weights.clone()

    data = load_scene(tiny_scene_dir, scene="tiny")
    cfg = TrainConfig(**DEVICE, hard_sampling=True, hard_sampling_every=2, log_every=2)
    job = _job(tmp_path, 4)
    _fit(data, cfg, job, callbacks=[Look()])
    assert seen["cdf"] is not None, "the refreshed weights reach the device sampler"
    torch.testing.assert_close(
        seen["cdf"][:, -1].float(), seen["weights"].sum(dim=1).float(), rtol=1e-4, atol=1e-3
    )
    assert (seen["weights"] != 1.0).any(), "refreshed from the predictions"


def test_device_resident_error_sampling_refreshes_the_device_sampler(tiny_scene_dir, tmp_path):
    import pytorch_lightning as pl

    from nsff_core.model.system import ERROR_SAMPLING_EVERY
    from nsff_core.workflow.stages.scene import load_scene
    from nsff_core.workflow.stages.train import _fit

    seen = {}

    class Look(pl.Callback):
        def on_train_end(self, trainer, module):
            seen["cdf"] = module.pixel_sampler.cdf
            seen["weights"] = module.tile_errors.pixel_weights(module.tile_error)

    data = load_scene(tiny_scene_dir, scene="tiny")
    cfg = TrainConfig(**DEVICE, error_sampling=0.5, log_every=2)
    _fit(data, cfg, _job(tmp_path, ERROR_SAMPLING_EVERY + 1), callbacks=[Look()])
    assert seen["cdf"] is not None, "the tile errors' weights reach the device sampler"
    # refreshed at the last multiple of ERROR_SAMPLING_EVERY: the errors of its later step
    # differ, the sum of each frame's weights (one) does not
    torch.testing.assert_close(
        seen["cdf"][:, -1].float(), seen["weights"].sum(dim=1).float(), rtol=1e-4, atol=1e-4
    )
    assert not torch.allclose(seen["weights"], seen["weights"].mean(1, keepdim=True))


def test_a_run_resumes_when_only_where_its_batches_are_drawn_changed(tiny_scene_dir, tmp_path):
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    host = dict(TINY, device_resident="host", checkpoint_every=2)
    train_scene(tiny_scene_dir, out, TrainConfig(**host, max_steps=2), scene="tiny")
    moved = dict(host, device_resident="device", compile="none")
    train_scene(tiny_scene_dir, out, TrainConfig(**moved, max_steps=4), scene="tiny")
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["global_step"] == 4 and ckpt["pixel_sampler"]["kind"] == "device"
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")][:2] == [0, 1], "resumed"
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is True
    # and back: fused Adam on the host too
    train_scene(tiny_scene_dir, out, TrainConfig(**host, max_steps=6), scene="tiny")
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["global_step"] == 6 and ckpt["pixel_sampler"]["kind"] == "host"
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is True
    # a checkpoint of plain Adam (host runs before fused Adam on the CPU) resumes as fused,
    # with its state
    for group in ckpt["optimizer_states"][0]["param_groups"]:
        group["fused"] = None
    params = list(ckpt["optimizer_states"][0]["state"])
    torch.save(ckpt, out / "last.ckpt")
    train_scene(tiny_scene_dir, out, TrainConfig(**host, max_steps=7), scene="tiny")
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["global_step"] == 7
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is True
    state = ckpt["optimizer_states"][0]["state"]
    assert all(int(state[k]["step"]) == 7 for k in params), "the step counts carried on"
