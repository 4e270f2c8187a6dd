"""The stage functions hand pretrained backends their source frames, training size and the
checkpoint listed in the weights marker (random weights; nothing is downloaded)."""

import json

import numpy as np
import pytest
import torch

from nsff_core.config import DepthConfig, FlowConfig, FramesConfig, MasksConfig
from nsff_core.errors import StageError
from nsff_core.model import io
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
    from nsff_core.priors.depth import compute_depth
    from nsff_core.priors.masks import compute_masks
    from nsff_core.priors.nets import dpt, maskrcnn

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
    # no motion masks (they need the flow): every instance is kept, nothing is united
    cfg = MasksConfig(
        backend="maskrcnn", classes=("person",), dilate=2, union_motion=False, min_moving_fraction=0
    )
    compute_masks(scene / "frames", None, None, None, scene / "masks", cfg, "s", **kw)
    shapes, hw, _, kwargs = calls["masks"]
    assert shapes == [(96, 160, 3)] * 3 and hw == (48, 80)  # source frames in, training size out
    assert kwargs["classes"] == ("person",) and kwargs["dilate_px"] == 2
    assert kwargs["checkpoint"] == ck["maskrcnn_v2_coco"] and kwargs["motion"] is None
    compute_depth(
        scene / "frames", None, scene, scene / "cameras.npz", scene / "disp",
        DepthConfig(backend="dpt", dpt_model="dpt_hybrid"), "s", **kw,
    )  # fmt: skip
    shapes, hw, args, _ = calls["depth"]
    assert shapes == [(96, 160, 3)] * 3 and hw == (48, 80)
    assert args[:2] == ("dpt_hybrid", ck["dpt_hybrid"])


class _RunsCode:
    """Unpickling this runs code: it writes ``path`` (a harmless stand-in for an attack)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


def test_pretrained_loads_stay_weights_only_whatever_the_environment(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off torch's safe unpickler for every load that
    leaves weights_only unset; ours pass weights_only=True, which it cannot override."""
    import pickle

    from nsff_core.priors.nets.pretrained import torch_load_weights
    from nsff_core.priors.nets.raft import load_raft

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    ran = tmp_path / "ran.txt"
    evil = tmp_path / "raft_large_C_T_V1-22a6c225.pth"
    torch.save({"weight": _RunsCode(ran)}, evil)
    with pytest.raises(StageError, match="starting with 22a6c225"):  # registry name: refused
        load_raft(evil, "cpu")
    # under a name of its own: loaded without a hash check, so only weights_only stops it
    plain = evil.rename(tmp_path / "raft.pth")
    with pytest.raises(StageError, match="not a torchvision RAFT-Large state dict"):
        load_raft(plain, "cpu")
    with pytest.raises(pickle.UnpicklingError):
        torch_load_weights(tmp_path / "raft.pth")
    assert not ran.exists()
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(tmp_path / "raft.pth")  # weights_only unset: the variable wins, code runs
    assert ran.read_text() == "ran"  # so the variable is live in this test


def test_every_pretrained_torch_load_passes_weights_only_true():
    """Static check of the loaders of pretrained files: no torch.load without
    weights_only=True (the default could be turned off by the environment)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "nsff_core"
    files = [*sorted((root / "priors").rglob("*.py")), root / "model" / "metrics.py"]
    calls = 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant), (path, node.lineno)
                assert kw["weights_only"].value is True, (path, node.lineno)
    assert calls >= 1


def test_a_registry_named_checkpoint_is_hash_checked_by_its_loader(scene):
    """RAFT's loader refuses a file named like torchvision's RAFT-Large whose sha256 does not
    start with the prefix in its name (before: any such file was loaded)."""
    from torchvision.models.optical_flow import raft_large

    from nsff_core.priors.nets.raft import load_raft
    from nsff_core.priors.weights import WeightsMismatch

    ckpt = scene / "raft_large_C_T_V1-22a6c225.pth"
    torch.save(raft_large(weights=None).state_dict(), ckpt)
    with pytest.raises(WeightsMismatch, match="starting with 22a6c225") as info:
        load_raft(ckpt, "cpu", scene="s")
    assert info.value.stage == "flow" and str(ckpt) in str(info.value)
