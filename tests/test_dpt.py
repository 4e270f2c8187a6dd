"""DPT depth backend (nsff_core.priors.nets.dpt) with random weights: checkpoint layout, strict
loading, the resize rule, and the disparity maps it writes. Nothing is downloaded.

Each network is built once per module (DPT-Large has ~340 M parameters) and run on tiny inputs
(``net_size=64``: a 64 x 32 frame stays 64 x 32, i.e. 4 x 2 patches).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nsff_core.errors import StageError
from nsff_core.model import io
from nsff_core.priors.nets import dpt

KINDS = ("dpt_large", "dpt_hybrid")
#: parameter names and shapes of the official checkpoints (outside the project: optional)
KEYS_JSON = Path(__file__).resolve().parents[2] / "shared" / "data" / "dpt_checkpoint_keys.json"
TINY = 64  # net_size for the forward tests


def official_layout(kind: str) -> dict[str, list[int]]:
    """Every parameter name and shape of the official checkpoint of ``kind``, written out from
    the reference DPT architecture (checked against KEYS_JSON when that file is present)."""
    out: dict[str, list[int]] = {}

    def param(name: str, weight: list[int], bias: bool = True) -> None:
        out[name + ".weight"] = weight
        if bias:
            out[name + ".bias"] = [weight[0]]

    def norm(name: str, c: int) -> None:
        param(name, [c])

    large = kind == "dpt_large"
    width, depth = (1024, 24) if large else (768, 12)
    vit = "pretrained.model."
    out[vit + "cls_token"] = [1, 1, width]
    out[vit + "pos_embed"] = [1, 1 + 24 * 24, width]
    if large:
        param(vit + "patch_embed.proj", [width, 3, 16, 16])
    else:  # ResNet-50 stem and stages 0-2 (3, 4, 9 bottlenecks), GroupNorm, no conv bias
        bb = vit + "patch_embed.backbone."
        param(bb + "stem.conv", [64, 3, 7, 7], bias=False)
        norm(bb + "stem.norm", 64)
        cin = 64
        for s, blocks in enumerate((3, 4, 9)):
            mid, cout = 64 * 2**s, 256 * 2**s
            for b in range(blocks):
                p = f"{bb}stages.{s}.blocks.{b}."
                if b == 0:
                    param(p + "downsample.conv", [cout, cin, 1, 1], bias=False)
                    norm(p + "downsample.norm", cout)
                param(p + "conv1", [mid, cin if b == 0 else cout, 1, 1], bias=False)
                norm(p + "norm1", mid)
                param(p + "conv2", [mid, mid, 3, 3], bias=False)
                norm(p + "norm2", mid)
                param(p + "conv3", [cout, mid, 1, 1], bias=False)
                norm(p + "norm3", cout)
            cin = cout
        param(vit + "patch_embed.proj", [width, 1024, 1, 1])
    for i in range(depth):
        p = f"{vit}blocks.{i}."
        norm(p + "norm1", width)
        param(p + "attn.qkv", [3 * width, width])
        param(p + "attn.proj", [width, width])
        norm(p + "norm2", width)
        param(p + "mlp.fc1", [4 * width, width])
        param(p + "mlp.fc2", [width, 4 * width])
    norm(vit + "norm", width)
    param(vit + "head", [1000, width])

    channels = (256, 512, width, width)
    resample = {1: [256, 256, 4, 4], 2: [512, 512, 2, 2], 4: [width, width, 3, 3]}
    for k in range(1, 5):
        if not large and k <= 2:
            continue  # the hybrid uses ResNet stages 0 and 1 as they are
        p = f"pretrained.act_postprocess{k}."
        param(p + "0.project.0", [width, 2 * width])
        param(p + "3", [channels[k - 1], width, 1, 1])
        if k in resample:
            param(p + "4", resample[k])
    for k in range(1, 5):
        param(f"scratch.layer{k}_rn", [256, channels[k - 1], 3, 3], bias=False)
        p = f"scratch.refinenet{k}."
        param(p + "out_conv", [256, 256, 1, 1])
        for unit in ("resConfUnit1", "resConfUnit2"):
            param(p + unit + ".conv1", [256, 256, 3, 3])
            param(p + unit + ".conv2", [256, 256, 3, 3])
    param("scratch.output_conv.0", [128, 256, 3, 3])
    param("scratch.output_conv.2", [32, 128, 3, 3])
    param("scratch.output_conv.4", [1, 32, 1, 1])
    return out


def _reference_json() -> dict[str, dict[str, list[int]]] | None:
    return json.loads(KEYS_JSON.read_text()) if KEYS_JSON.is_file() else None


def expected_layout(kind: str) -> dict[str, list[int]]:
    ref = _reference_json()
    return ref[kind] if ref is not None else official_layout(kind)


def layout_diff(got: dict[str, list[int]], want: dict[str, list[int]]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = [
        f"{k}: {got[k]} != {want[k]}" for k in sorted(set(got) & set(want)) if got[k] != want[k]
    ]
    return f"missing {missing}\nextra {extra}\nshape {shapes}"


@pytest.fixture(scope="module")
def models() -> dict[str, dpt.DPT]:
    """Both networks, random weights, each built on first use and kept for the module."""

    class Lazy(dict):
        def __missing__(self, kind: str) -> dpt.DPT:
            torch.manual_seed(0)
            self[kind] = dpt.build_dpt(kind)
            return self[kind]

    return Lazy()


def _frame(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient plus noise, (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), 128 + 0 * xx], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- checkpoint layout


@pytest.mark.skipif(not KEYS_JSON.is_file(), reason=f"{KEYS_JSON} not present")
@pytest.mark.parametrize("kind", KINDS)
def test_written_layout_equals_the_reference_json(kind):
    want = _reference_json()[kind]
    got = official_layout(kind)
    assert got == want, layout_diff(got, want)
    assert len(got) == 368


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_is_the_official_checkpoint_layout(models, kind):
    got = {k: list(v.shape) for k, v in models[kind].state_dict().items()}
    want = expected_layout(kind)
    assert got == want, layout_diff(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_strict_load_of_a_checkpoint_shaped_state_dict(kind):
    """Random tensors with the checkpoint's names and shapes load with strict=True (into a
    fresh model built on the meta device, so the shared random models keep their weights)."""
    g = torch.Generator().manual_seed(1)
    state = {
        k: torch.randn(shape, generator=g) * 0.02 for k, shape in expected_layout(kind).items()
    }
    model = dpt.build_dpt(kind, device="meta")
    dpt.load_weights(model, state, assign=True)  # load_state_dict(strict=True) inside
    assert not any(p.is_meta for p in model.parameters())
    for name in ("scratch.output_conv.4.weight", "pretrained.model.pos_embed"):
        torch.testing.assert_close(model.state_dict()[name], state[name])
    # a training-checkpoint wrapper with DataParallel key prefixes is unwrapped
    dpt.load_weights(model, {"model": {f"module.{k}": v for k, v in state.items()}})

    bad = dict(state)
    del bad["scratch.layer1_rn.weight"]
    bad["pretrained.model.fc_norm.weight"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"scratch\.layer1_rn\.weight") as err:
        dpt.load_weights(model, bad)
    assert "fc_norm" in str(err.value)


def test_load_dpt_reports_a_missing_checkpoint(tmp_path):
    with pytest.raises(StageError, match="dpt_hybrid-midas-501f0c75.pt"):
        dpt.load_dpt("dpt_hybrid", tmp_path / "nope.pt", "cpu", scene="s")


def test_load_dpt_round_trip_through_a_checkpoint_file(models, tmp_path):
    """Save a random hybrid, load it with load_dpt (meta-device build + strict assign):
    same weights, same predictions."""
    model = models["dpt_hybrid"]
    path = tmp_path / "dpt_hybrid.pt"
    torch.save(model.state_dict(), path)
    loaded = dpt.load_dpt("dpt_hybrid", path, "cpu")
    assert loaded.kind == "dpt_hybrid" and not loaded.training
    params = list(loaded.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    frame = _frame(64, 32, 3)
    np.testing.assert_array_equal(
        dpt.predict_disparity(loaded, frame, (16, 24), net_size=TINY),
        dpt.predict_disparity(model, frame, (16, 24), net_size=TINY),
    )


def test_load_dpt_rejects_a_foreign_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(StageError, match="not a dpt_hybrid checkpoint"):
        dpt.load_dpt("dpt_hybrid", path, "cpu")
    path.write_bytes(b"garbage")
    with pytest.raises(StageError, match="does not load into dpt_hybrid"):
        dpt.load_dpt("dpt_hybrid", path, "cpu")


def test_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="dpt_large"):
        dpt.build_dpt("dpt_tiny")
    with pytest.raises(StageError, match="dpt_tiny"):
        dpt.compute_depth_dpt([_frame(64, 32)], tmp_path / "disp", (8, 8), kind="dpt_tiny")


# --------------------------------------------------------------------------- resize rule


@pytest.mark.parametrize(
    ("wh", "expected"),
    [
        ((1280, 720), (672, 384)),  # nsff_pl's rule: the height needs the smaller change
        ((720, 1280), (384, 672)),
        ((384, 384), (384, 384)),
        ((512, 288), (384, 224)),  # s_w = 0.75 beats s_h = 1.33; 216 -> 224
        ((640, 480), (512, 384)),
        ((854, 480), (672, 384)),  # 683.2 -> 21.35 * 32 -> 672
        ((64, 32), (384, 192)),  # small frames are enlarged
        ((80, 384), (64, 384)),  # scale 1; 80 / 32 = 2.5 rounds to even (np.round) -> 64
        ((10000, 10), (384, 32)),  # never below one multiple
    ],
)
def test_dpt_input_size(wh, expected):
    assert dpt.dpt_input_size(*wh) == expected


def test_dpt_input_size_other_target():
    assert dpt.dpt_input_size(64, 32, target=64) == (64, 32)
    assert dpt.dpt_input_size(100, 60, target=64) == (96, 64)  # 106.7 x 64 -> 96 x 64


def test_prepare_input_normalises_and_resizes():
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:, :, 0] = 255
    x = dpt.prepare_input(rgb, net_size=64)
    assert x.shape == (3, *dpt.dpt_input_size(50, 30, 64)[::-1])
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[1:], -1.0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        dpt.prepare_input(rgb.astype(np.float32))


def test_cap_size_follows_the_preprocessing_rule():
    assert dpt.cap_size(np.zeros((720, 1280, 3), np.uint8), (1280, 720)).shape == (720, 1280, 3)
    assert dpt.cap_size(np.zeros((1080, 1920, 3), np.uint8), (1280, 720)).shape == (720, 1280, 3)


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_maps_have_strides_4_to_32(models, kind):
    model = models[kind]
    with torch.inference_mode():
        maps = model.pretrained(torch.zeros(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, 64 // s, 96 // s)
        for c, s in zip(dpt.ARCHS[kind].channels, (4, 8, 16, 32), strict=True)
    ]
    with pytest.raises(ValueError, match="multiple of 32"):
        model.pretrained(torch.zeros(1, 3, 48, 64))


def test_position_embedding_resize(models):
    enc = models["dpt_large"].pretrained
    torch.testing.assert_close(enc.resized_pos_embed((24, 24)), enc.model.pos_embed)
    pe = enc.resized_pos_embed((2, 4))
    assert pe.shape == (1, 1 + 8, 1024)
    torch.testing.assert_close(pe[:, 0], enc.model.pos_embed[:, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_predict_disparity_format(models, kind):
    model = models[kind]
    with torch.no_grad():  # a positive bias keeps the final ReLU open on random weights
        model.scratch.output_conv[4].bias.fill_(1.0)
    disp = dpt.predict_disparity(model, _frame(64, 32), (20, 30), net_size=TINY)
    assert disp.dtype == np.float32
    assert disp.shape == (20, 30)
    assert np.isfinite(disp).all()
    assert (disp >= 0).all()
    assert disp.std() > 0  # the image reaches the output


def test_batched_prediction_equals_single_frames(models):
    model = models["dpt_hybrid"]
    frames = [_frame(64, 32, seed) for seed in (1, 2)]
    both = dpt.predict_disparities(model, frames, (16, 24), net_size=TINY)
    for f, d in zip(frames, both, strict=True):
        single = dpt.predict_disparity(model, f, (16, 24), net_size=TINY)
        np.testing.assert_allclose(d, single, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the stage


def test_compute_depth_dpt_writes_one_map_per_frame(models, tmp_path):
    model = models["dpt_hybrid"]
    src = tmp_path / "src"
    src.mkdir()
    frames: list = [_frame(64, 32, i) for i in range(3)]
    io.write_image(src / "b.png", frames[1])
    frames[1] = src / "b.png"  # arrays and paths mix
    out = tmp_path / "disp"
    summary = dpt.compute_depth_dpt(
        frames, out, (12, 20), model=model, device="cpu", batch_size=2, net_size=TINY
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000.npy", "00001.npy", "00002.npy"]
    for name in names:
        d = io.read_disparity(out / name)
        assert d.dtype == np.float32 and d.shape == (12, 20)
        assert np.isfinite(d).all() and (d >= 0).all()
    assert np.load(out / "00000.npy").dtype == np.float32
    assert summary["frames"] == 3 and summary["backend"] == "dpt"
    assert summary["net_wh"] == [[64, 32]] and summary["out_hw"] == [12, 20]
    # a folder of PNGs works too and replaces the output
    for i, f in enumerate([_frame(64, 32, 7), _frame(64, 32, 8)]):
        io.write_image(src / io.frame_name(i), f)
    (src / "b.png").unlink()
    dpt.compute_depth_dpt(src, out, (12, 20), model=model, net_size=TINY)
    assert sorted(p.name for p in out.iterdir()) == ["00000.npy", "00001.npy"]


def test_compute_depth_dpt_leaves_nothing_on_failure(models, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "disp"
    with pytest.raises(StageError, match="cannot be read"):
        dpt.compute_depth_dpt(
            [_frame(64, 32), bad], out, (8, 8), model=models["dpt_hybrid"], net_size=TINY
        )
    assert not out.exists()
    assert not list(tmp_path.glob(".disp.tmp-*"))
