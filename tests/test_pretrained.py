"""The stage functions hand pretrained backends their source frames, training size and the
checkpoint listed in the weights marker (random weights; nothing is downloaded)."""

import json

import numpy as np
import pytest
import torch

from nsff_core import io
from nsff_core.config import DepthConfig, FlowConfig, FramesConfig, MasksConfig
from nsff_core.errors import StageError
from nsff_core.priors.frames import extract_frames


@pytest.fixture
def scene(tmp_path):
    """A 3-frame image-folder source at 160x96 whose training frames are 80x48."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (96, 200, 3), dtype=np.uint8)
    for i in range(3):
        io.write_image(src / f"{i}.png", np.ascontiguousarray(base[:, 2 * i : 2 * i + 160]))
    extract_frames(src, tmp_path / "frames", tmp_path / "frames.json", FramesConfig(width=80))
    return tmp_path


def _marker(path, entries):
    path.write_text(json.dumps({"weights": {k: {"path": str(v)} for k, v in entries.items()}}))
    return path


def test_raft_backend_runs_from_the_marker_at_training_size(scene):
    from nsff_core.priors.flow import compute_flow

    torch.manual_seed(0)
    from torchvision.models.optical_flow import raft_large

    ckpt = scene / "raft.pth"
    torch.save(raft_large(weights=None).state_dict(), ckpt)
    marker = _marker(scene / "weights.json", {"raft_large": ckpt})
    out = [scene / d for d in ("fw", "bw", "ok")]
    cfg = FlowConfig(backend="raft", raft_iters=2)
    compute_flow(
        scene / "frames", *out, cfg, "s", frames_json=scene / "frames.json", weights=marker
    )
    flows = sorted((scene / "fw").glob("*.flo"))
    assert len(flows) == 2 and io.read_flo(flows[0]).shape == (48, 80, 2)
    assert len(list((scene / "ok").glob("*.png"))) == 4


def test_a_missing_marker_entry_names_the_stage_and_what_to_do(scene):
    from nsff_core.priors.flow import compute_flow

    marker = _marker(scene / "weights.json", {})
    with pytest.raises(StageError, match="rule 'flow'.*raft_large"):
        compute_flow(
            scene / "frames",
            scene / "fw",
            scene / "bw",
            scene / "ok",
            FlowConfig(backend="raft"),
            "s",
            frames_json=scene / "frames.json",
            weights=marker,
        )
    assert not (scene / "fw").exists()


def test_masks_and_depth_dispatch(scene, monkeypatch):
    from nsff_core.priors import dpt, maskrcnn
    from nsff_core.priors.depth import compute_depth
    from nsff_core.priors.masks import compute_masks

    calls = {}

    def fake(name):
        def record(frames, out_dir, out_hw, *args, **kwargs):
            calls[name] = ([f.shape for f in frames], out_hw, args, kwargs)
            return {}

        return record

    monkeypatch.setattr(maskrcnn, "compute_masks_maskrcnn", fake("masks"))
    monkeypatch.setattr(dpt, "compute_depth_dpt", fake("depth"))
    ck = {n: scene / f"{n}.pth" for n in ("maskrcnn_v2_coco", "dpt_hybrid")}
    for p in ck.values():
        p.write_bytes(b"x")
    marker = _marker(scene / "weights.json", ck)
    kw = dict(frames_json=scene / "frames.json", weights=marker)
    cfg = MasksConfig(backend="maskrcnn", classes=("person",), dilate=2)
    compute_masks(scene / "frames", None, None, None, scene / "masks", cfg, "s", **kw)
    shapes, hw, _, kwargs = calls["masks"]
    assert shapes == [(96, 160, 3)] * 3 and hw == (48, 80)  # source frames in, training size out
    assert kwargs["classes"] == ("person",) and kwargs["dilate_px"] == 2
    assert kwargs["checkpoint"] == ck["maskrcnn_v2_coco"] and kwargs["union_with"] is None
    compute_depth(
        scene / "frames", None, scene, scene / "cameras.npz", scene / "disp",
        DepthConfig(backend="dpt", dpt_model="dpt_hybrid"), "s", **kw,
    )  # fmt: skip
    shapes, hw, args, _ = calls["depth"]
    assert shapes == [(96, 160, 3)] * 3 and hw == (48, 80)
    assert args[:2] == ("dpt_hybrid", ck["dpt_hybrid"])
