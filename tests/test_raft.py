"""RAFT flow backend: padding, resizing, output files. Random weights only, nothing downloaded."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from nsff_core.errors import StageError  # noqa: E402
from nsff_core.model.io import frame_name, read_flo, read_mask, write_image  # noqa: E402
from nsff_core.priors.nets.flow_ops import resize_flow  # noqa: E402
from nsff_core.priors.nets.images import cap_size  # noqa: E402
from nsff_core.priors.nets.raft import (  # noqa: E402
    _raft_forward,
    compute_flow_raft,
    load_raft,
    pad_amounts,
    pad_to_multiple,
    raft_flow,
    unpad,
)


@pytest.fixture(scope="module")
def raft():
    torch.manual_seed(0)
    return load_raft(None, "cpu")


def _textured(h, w, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.kron(img, np.ones((4, 4, 1), np.uint8))[:h, :w].copy()


def test_pad_amounts_split_like_the_sintel_padder():
    assert pad_amounts(45, 61) == (1, 2, 1, 2)  # 61 x 45 -> 64 x 48
    assert pad_amounts(48, 64) == (0, 0, 0, 0)
    assert pad_amounts(45, 61, min_side=128) == (33, 34, 41, 42)
    # min_side 100 rounds up to a multiple of 8, 104: 104 - 61 = 43 and 104 - 45 = 59
    assert pad_amounts(45, 61, min_side=100) == (21, 22, 29, 30)


@pytest.mark.parametrize("hw", [(45, 61), (48, 64), (1, 1), (7, 9), (130, 17)])
def test_pad_unpad_round_trip_is_exact(hw):
    h, w = hw
    x = torch.randn(2, 3, h, w)
    for min_side in (0, 128):
        p, pads = pad_to_multiple(x, 8, min_side)
        assert p.shape[-2] % 8 == 0 and p.shape[-1] % 8 == 0
        assert p.shape[-2] >= max(h, min_side) and p.shape[-1] >= max(w, min_side)
        left, right, top, bottom = pads
        assert abs(left - right) <= 1 and abs(top - bottom) <= 1
        assert torch.equal(unpad(p, pads), x)
        # replicate padding: the first padded column repeats the first image column
        if left:
            assert torch.equal(p[..., top : top + h, 0], x[..., 0])


def test_raft_flow_removes_the_padding_exactly():
    """A stand-in network whose 'flow' is the first two channels of image 1: the unpadded
    output must be the input image itself, pixel for pixel (no offset, no extra rows)."""

    class Echo(torch.nn.Module):
        def forward(self, image1, image2, num_flow_updates=12):
            return [image1[:, :2]]

    img = _textured(45, 61, 0)
    flow = raft_flow(Echo(), img, img, iters=2)
    assert flow.shape == (45, 61, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(flow, img[..., :2] / 127.5 - 1.0, atol=1e-6)


def test_raft_flow_shape_is_the_unpadded_input_size(raft):
    a, b = _textured(45, 61, 1), _textured(45, 61, 2)
    flow = raft_flow(raft, a, b, iters=2)
    assert flow.shape == (45, 61, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()


def test_test_mode_forward_equals_torchvision_forward(raft):
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(1, 3, 128, 136, generator=g) * 2 - 1
    x2 = torch.rand(1, 3, 128, 136, generator=g) * 2 - 1
    with torch.inference_mode():
        ours = _raft_forward(raft, x1, x2, iters=2, amp=False)
        ref = raft(x1, x2, num_flow_updates=2)[-1]
    torch.testing.assert_close(ours, ref)


def test_resize_flow_scales_the_vectors():
    flow = np.zeros((50, 100, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, 2.0
    small = resize_flow(flow, (25, 50))
    assert small.shape == (25, 50, 2)
    np.testing.assert_allclose(small[..., 0], 1.5, atol=1e-6)
    np.testing.assert_allclose(small[..., 1], 1.0, atol=1e-6)
    # anisotropic: only v changes when only H changes
    tall = resize_flow(flow, (100, 100))
    np.testing.assert_allclose(tall[..., 0], 3.0, atol=1e-6)
    np.testing.assert_allclose(tall[..., 1], 4.0, atol=1e-6)
    same = resize_flow(flow, (50, 100))
    assert same is not flow and np.array_equal(same, flow)


def test_cap_size_follows_nsff_pl():
    assert cap_size(np.zeros((1440, 2560, 3), np.uint8), (1280, 720)).shape == (720, 1280, 3)
    assert cap_size(np.zeros((1000, 1000, 3), np.uint8), (1280, 720)).shape == (720, 720, 3)
    small = np.zeros((288, 512, 3), np.uint8)
    assert cap_size(small, (1280, 720)) is small
    assert cap_size(small, None) is small


def test_compute_flow_raft_writes_the_dis_layout(raft, tmp_path):
    frames = [_textured(45, 61, s) for s in range(4)]
    out_hw = (24, 32)
    dirs = tmp_path / "flow_fw", tmp_path / "flow_bw", tmp_path / "flow_ok"
    summary = compute_flow_raft(frames, *dirs, out_hw, iters=2, batch_pairs=2, model=raft)
    assert summary["pairs"] == 3 and summary["raft_hw"] == [45, 61]
    fw_dir, bw_dir, ok_dir = dirs
    assert sorted(p.name for p in fw_dir.iterdir()) == [frame_name(i, ".flo") for i in range(3)]
    assert sorted(p.name for p in bw_dir.iterdir()) == [frame_name(i, ".flo") for i in (1, 2, 3)]
    assert len(list(ok_dir.glob("*_fw.png"))) == 3 and len(list(ok_dir.glob("*_bw.png"))) == 3
    for i in range(3):
        fw = read_flo(fw_dir / frame_name(i, ".flo"))
        bw = read_flo(bw_dir / frame_name(i + 1, ".flo"))
        assert fw.shape == bw.shape == (*out_hw, 2)
        assert read_mask(ok_dir / f"{i:05d}_fw.png").shape == out_hw
    # batching keeps each pair's direction: the batch [0->1, 1->2, 1->0, 2->1] gives pair 1
    # its fw 1 -> 2 and bw 2 -> 1
    fw = read_flo(fw_dir / frame_name(1, ".flo"))
    bw = read_flo(bw_dir / frame_name(2, ".flo"))
    np.testing.assert_allclose(
        fw, resize_flow(raft_flow(raft, frames[1], frames[2], iters=2), out_hw), atol=1e-4
    )
    np.testing.assert_allclose(
        bw, resize_flow(raft_flow(raft, frames[2], frames[1], iters=2), out_hw), atol=1e-4
    )


def test_compute_flow_raft_reads_a_frames_folder(raft, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    for i in range(2):
        write_image(src / frame_name(i), _textured(40, 50, i))
    dirs = tmp_path / "fw", tmp_path / "bw", tmp_path / "ok"
    summary = compute_flow_raft(src, *dirs, (20, 25), iters=1, model=raft)
    assert summary["pairs"] == 1
    assert read_flo(dirs[0] / "00000.flo").shape == (20, 25, 2)
    assert read_flo(dirs[1] / "00001.flo").shape == (20, 25, 2)


def test_compute_flow_raft_needs_two_frames_and_leaves_nothing(raft, tmp_path):
    dirs = tmp_path / "fw", tmp_path / "bw", tmp_path / "ok"
    with pytest.raises(StageError, match="at least 2"):
        compute_flow_raft([_textured(40, 50, 0)], *dirs, (20, 25), iters=1, model=raft)
    assert not any(d.exists() for d in dirs)
    with pytest.raises(StageError, match="one size"):
        frames = [_textured(40, 50, 0), _textured(40, 52, 1)]
        compute_flow_raft(frames, *dirs, (20, 25), iters=1, model=raft)


def test_load_raft_checkpoint_strict(raft, tmp_path):
    with pytest.raises(StageError, match="not found"):
        load_raft(tmp_path / "missing.pth", "cpu")
    bad = tmp_path / "bad.pth"
    torch.save({"fnet.conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(StageError, match="not a torchvision RAFT-Large"):
        load_raft(bad, "cpu")
    good = tmp_path / "good.pth"
    torch.save(raft.state_dict(), good)
    loaded = load_raft(good, "cpu")
    for (k, v), (k2, v2) in zip(
        raft.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_precision_batches(raft, tmp_path):
    model = load_raft(None, "cuda")
    model.load_state_dict(raft.state_dict())
    frames = [_textured(45, 61, s) for s in range(5)]
    dirs = tmp_path / "fw", tmp_path / "bw", tmp_path / "ok"
    summary = compute_flow_raft(frames, *dirs, (24, 32), iters=2, model=model)
    assert summary["amp"] and summary["pairs"] == 4
    fw = read_flo(dirs[0] / "00000.flo")
    assert fw.shape == (24, 32, 2) and np.isfinite(fw).all()
    ref = resize_flow(raft_flow(raft, frames[0], frames[1], iters=2), (24, 32))
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(fw - ref).max() < 0.05 * scale  # float16 encoders, float32 correlation
