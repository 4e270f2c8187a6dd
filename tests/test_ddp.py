"""Training one scene with DDP (train.gpus: 2), in two CPU processes with the gloo backend."""

import json
from types import SimpleNamespace

import pytest
import torch

from nsff_core.config import TrainConfig
from nsff_core.model.checkpoint import load_checkpoint
from nsff_core.model.data import FrameSampler

from .test_train import TINY, _rows

pytestmark = [
    pytest.mark.stage,
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="needs torch.distributed with gloo",
    ),
]


@pytest.fixture
def cpu_only(monkeypatch):
    """CPU DDP (gloo) also on a machine with GPUs: the workers see none, nor does the parent."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


#: what steps_per_epoch and the ray streams know of the tiny scene (12 frames, 160x90)
TINY_SCENE = SimpleNamespace(num_frames=12, hw=(90, 160))


def _stream(seed, n):
    """The first ``n`` batches (frame, pixels) of the tiny scene's ray stream seeded ``seed``."""
    s = FrameSampler(TINY_SCENE.num_frames, TINY_SCENE.hw, TINY["batch_size"], seed=seed)
    out = []
    for _ in range(n):
        t = s.next_frame()
        out.append((t, s.next_pixels(t)))
    return out


def _draws(state, seed, limit=30):
    """How many batches the stream seeded ``seed`` had drawn when it was in ``state``; None when
    it never is within ``limit`` batches (another seed)."""
    s = FrameSampler(TINY_SCENE.num_frames, TINY_SCENE.hw, TINY["batch_size"], seed=seed)
    for n in range(limit + 1):
        if torch.equal(s.generator.get_state(), state["rng"]) and s.previous == state["previous"]:
            return n
        s.next_pixels(s.next_frame())
    return None


def _load(path):
    return load_checkpoint(path)


def test_steps_per_epoch_is_the_same_rays_on_n_processes():
    from nsff_core.workflow.stages.train import steps_per_epoch

    cfg = TrainConfig(**TINY)  # 10 one-process steps per epoch
    assert [steps_per_epoch(cfg, TINY_SCENE, n) for n in (1, 2, 3, 4, 10, 16)] == [
        10,
        5,
        4,
        3,
        1,
        1,
    ]
    # nsff_pl's epoch: H * W * N / 1000 = 172 steps of 512 rays, 1,376 steps of TINY's 64
    nsff_pl = TrainConfig(**dict(TINY, steps_per_epoch=None))
    assert [steps_per_epoch(nsff_pl, TINY_SCENE, n) for n in (1, 2, 3)] == [1376, 688, 459]


def test_two_processes_train_one_scene_and_resume(tiny_scene_dir, tmp_path, cpu_only):
    from nsff_core.model.system import NSFFSystem
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    # one epoch, no max_steps: 10 one-process steps of 64 rays = 5 steps of 2 x 64 rays
    last = train_scene(tiny_scene_dir, out, TrainConfig(**TINY, epochs=1, gpus=2), scene="tiny")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.ckpt", "metrics.csv"]
    facts = json.loads((out / "config.json").read_text())
    assert facts["world_size"] == 2 and facts["train"]["gpus"] == 2
    assert (facts["num_frames"], tuple(facts["hw"])) == (TINY_SCENE.num_frames, TINY_SCENE.hw)
    assert facts["steps_per_epoch"] == 5 and facts["max_steps"] == 5, "half the 1-process epoch"
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == [0, 1, 2, 3, 4]
    ckpt = _load(last)
    assert ckpt["global_step"] == 5
    assert ckpt["hyper_parameters"]["steps_per_epoch"] == 5, "the loss schedule's epoch"
    # the cosine learning rate spans the 5 steps: zero at the end
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)

    # both processes trained: every rank's state is in the checkpoint
    ddp = ckpt["ddp"]
    assert ddp["world_size"] == 2 and len(ddp["ranks"]) == 2
    digests = [r["state_digest"] for r in ddp["ranks"]]
    assert digests[0] == digests[1], "DDP keeps the ranks' weights equal"
    system = NSFFSystem.load_from_checkpoint(last, map_location="cpu")
    assert system.state_digest() == digests[0], "the digest is of the saved weights"
    # rank r drew its own stream, seeded 42 + r, one batch per step (and maybe one prefetched)
    drawn = [_draws(r["pixel_sampler"], 42 + i) for i, r in enumerate(ddp["ranks"])]
    assert None not in drawn and min(drawn) >= 5, drawn
    assert ckpt["pixel_sampler"]["previous"] == ddp["ranks"][0]["pixel_sampler"]["previous"]
    (t0, px0), (t1, px1) = (_stream(42 + r, 1)[0] for r in (0, 1))
    assert t0 != t1 or not torch.equal(px0, px1), "the ranks' first batches differ"
    # and its own jitter and noise (seeded 42 + r), kept for its resume
    rngs = [r["render_rng"]["cpu"] for r in ddp["ranks"]]
    assert not torch.equal(rngs[0], rngs[1]), "each rank keeps its own render random state"

    # an explicit max_steps is a step count; the rerun resumes every rank's stream
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=7, gpus=2), scene="tiny")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.ckpt", "metrics.csv"]
    ckpt = _load(last)
    assert ckpt["global_step"] == 7
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == list(range(7))
    ranks = ckpt["ddp"]["ranks"]
    assert ranks[0]["state_digest"] == ranks[1]["state_digest"] != digests[0]
    resumed = [_draws(r["pixel_sampler"], 42 + i) for i, r in enumerate(ranks)]
    # a rank that restarted its stream would have drawn about 2 batches, not 7 or more
    assert None not in resumed and min(resumed) >= 7 and resumed[0] > drawn[0], (drawn, resumed)

    # another number of processes does not resume: other epochs and ray streams
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=1), scene="tiny")
    ckpt = _load(last)
    assert ckpt["global_step"] == 1 and "ddp" not in ckpt
    assert json.loads((out / "config.json").read_text())["steps_per_epoch"] == 10


def test_hard_sampling_weights_are_the_same_on_every_rank(tiny_scene_dir, tmp_path, cpu_only):
    from nsff_core.workflow.stages.train import train_scene

    cfg = TrainConfig(**TINY, max_steps=2, gpus=2, hard_sampling=True, hard_sampling_every=1)
    last = train_scene(tiny_scene_dir, tmp_path, cfg, scene="tiny")
    ckpt = _load(last)
    assert ckpt["global_step"] == 2
    w = ckpt["state_dict"]["hard_weights"]
    assert not torch.all(w == 1), "the weights were refreshed"
    ranks = ckpt["ddp"]["ranks"]
    assert len(ranks) == 2 and ranks[0]["state_digest"] == ranks[1]["state_digest"]


def test_error_sampling_keeps_the_same_tile_errors_on_every_rank(
    tiny_scene_dir, tmp_path, cpu_only
):
    from nsff_core.workflow.stages.train import train_scene

    cfg = TrainConfig(**TINY, max_steps=3, gpus=2, error_sampling=0.5)
    last = train_scene(tiny_scene_dir, tmp_path, cfg, scene="tiny")
    ckpt = _load(last)
    errors = ckpt["state_dict"]["tile_error"]
    # each step folds in both ranks' batches (two frames, one per rank)
    assert 2 <= (errors >= 0).any(dim=1).sum() <= 6
    # the digest covers the persistent buffers: the ranks' tile errors are equal
    ranks = ckpt["ddp"]["ranks"]
    assert len(ranks) == 2 and ranks[0]["state_digest"] == ranks[1]["state_digest"]


def test_a_failing_worker_fails_the_run(tiny_scene_dir, tmp_path, cpu_only):
    from nsff_core.workflow.stages.train import train_scene

    # the field type is checked where the model is built: in the workers
    cfg = TrainConfig(**dict(TINY, field="nonsense"), max_steps=1, gpus=2)
    with pytest.raises(RuntimeError, match="DDP worker rank"):
        train_scene(tiny_scene_dir, tmp_path, cfg, scene="tiny")
    assert not (tmp_path / "last.ckpt").exists()
