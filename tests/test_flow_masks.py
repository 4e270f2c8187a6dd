"""Optical flow (DIS) and epipolar motion masks: unit cases and quality floors on the
synthetic scene."""

import numpy as np
import pytest

from nsff_core.config import MasksConfig
from nsff_core.model.io import frame_name, list_frames, read_flo, read_mask
from nsff_core.model.metrics import iou
from nsff_core.priors.masks import (
    clean_mask,
    compute_masks,
    fill_holes,
    sampson_distance,
)
from nsff_core.priors.nets.flow_ops import consistency_mask, sample_flow, textured


def test_sample_flow_shifts_by_the_flow():
    field = np.arange(4 * 6, dtype=np.float32).reshape(4, 6, 1)
    flow = np.zeros((4, 6, 2), np.float32)
    flow[..., 0] = 1.0  # sample one pixel to the right
    out = sample_flow(field, flow)[..., 0]
    np.testing.assert_allclose(out[:, :-1], field[:, 1:, 0])
    np.testing.assert_allclose(out[:, -1], field[:, -1, 0])  # border replicated


def test_consistency_mask_hand_cases():
    fw = np.zeros((5, 8, 2), np.float32)
    fw[..., 0] = 2.0
    bw = -fw
    ok = consistency_mask(fw, bw)
    # consistent everywhere the target x + 2 stays inside the image (x <= 5)
    assert ok[:, :6].all() and not ok[:, 6:].any()
    bad_bw = bw.copy()
    bad_bw[2, 4] = (3.0, 0.0)  # pixel (2, 2) lands on (2, 4), whose backward flow disagrees
    ok2 = consistency_mask(fw, bad_bw)
    assert not ok2[2, 2] and ok2[2, 1]


def test_sampson_distance_of_a_sideways_camera():
    # camera translates along x (same K both frames): epipolar lines are the image rows
    K = np.array([[200.0, 0, 40], [0, 200, 30], [0, 0, 1]])
    tx = np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)  # [t]_x for t = (1, 0, 0)
    Kinv = np.linalg.inv(K)
    F = Kinv.T @ tx @ Kinv
    flow = np.zeros((60, 80, 2))
    flow[..., 0] = np.linspace(-5, 5, 80)  # any horizontal motion fits
    np.testing.assert_allclose(sampson_distance(F, flow), 0, atol=1e-9)
    flow[..., 1] = 2.0  # a vertical offset of d px has Sampson distance d / sqrt(2)
    np.testing.assert_allclose(sampson_distance(F, flow), 2 / np.sqrt(2), rtol=1e-9)


def test_clean_mask_removes_speckle_and_dilates():
    raw = np.zeros((60, 80), bool)
    raw[20:40, 30:50] = True  # the mover
    raw[5, 5] = raw[50, 70] = True  # speckle
    cfg = MasksConfig(dilate=2)
    m = clean_mask(raw, cfg)
    assert not m[5, 5] and not m[50, 70]
    assert m[20:40, 30:50].all() and m[18, 40] and not m[16, 40]


def test_fill_holes_fills_only_enclosed_background():
    m = np.zeros((20, 30), np.uint8)
    m[5:15, 5:15] = 1
    m[8:12, 8:12] = 0  # a hole inside the ring
    m[0:6, 20:30] = 1
    m[0:3, 24:27] = 0  # a notch open to the image border: not enclosed
    out = fill_holes(m)
    assert out[8:12, 8:12].all() and not out[0:3, 24:27].any()
    assert out.sum() == m.sum() + 16


def test_texture_test_rejects_flat_and_single_edge_regions():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 30:] = 200  # one vertical edge: flow along it is undetermined
    rng = np.random.default_rng(0)
    img[:20, :20] = rng.integers(0, 255, (20, 20, 1), dtype=np.uint8)  # texture
    tex = textured(img, 1e-4)
    assert tex[5:15, 5:15].all()
    assert not tex[30:, 40:].any() and not tex[30:, 28:32].any()


@pytest.mark.stage
def test_dis_flow_end_point_error(synthetic_scene, synthetic_flow):
    fw_dir, bw_dir, ok_dir, _ = synthetic_flow
    n = len(synthetic_scene.images)
    assert len(list(fw_dir.glob("*.flo"))) == n - 1 and len(list(bw_dir.glob("*.flo"))) == n - 1
    assert not (fw_dir / frame_name(n - 1, ".flo")).exists()
    assert not (bw_dir / frame_name(0, ".flo")).exists()
    epe_fw = [
        np.linalg.norm(
            read_flo(fw_dir / frame_name(i, ".flo")) - synthetic_scene.flow_fw[i], axis=-1
        )
        for i in range(n - 1)
    ]
    epe_bw = [
        np.linalg.norm(
            read_flo(bw_dir / frame_name(i + 1, ".flo")) - synthetic_scene.flow_bw[i], axis=-1
        )
        for i in range(n - 1)
    ]
    mean_fw = float(np.mean(epe_fw))
    print(f"DIS EPE forward {mean_fw:.3f} px, backward {np.mean(epe_bw):.3f} px")
    assert mean_fw <= 1.5
    assert float(np.mean(epe_bw)) <= 1.5
    # the consistency mask keeps the accurate pixels: its EPE is lower than the overall EPE
    ok = [read_mask(ok_dir / f"{i:05d}_fw.png") for i in range(n - 1)]
    ok_epe = np.mean([e[m].mean() for e, m in zip(epe_fw, ok, strict=True)])
    bad_epe = np.mean([e[~m].mean() for e, m in zip(epe_fw, ok, strict=True) if (~m).any()])
    assert ok_epe < bad_epe
    assert np.mean([m.mean() for m in ok]) > 0.8


@pytest.mark.stage
def test_epipolar_masks_iou(synthetic_scene, synthetic_flow, tmp_path):
    fw_dir, bw_dir, ok_dir, _ = synthetic_flow
    frames_dir = fw_dir.parent / "frames"
    summary = compute_masks(
        frames_dir,
        fw_dir,
        bw_dir,
        ok_dir,
        tmp_path / "masks",
        MasksConfig(backend="epipolar", dilate=3),
        scene="synthetic",
    )
    masks = [read_mask(p) for p in list_frames(tmp_path / "masks")]
    assert len(masks) == len(synthetic_scene.images)
    ious = [iou(m, gt) for m, gt in zip(masks, synthetic_scene.dynamic_mask, strict=True)]
    print(f"epipolar mask IoU mean {np.mean(ious):.3f} min {np.min(ious):.3f}; {summary}")
    assert np.mean(ious) >= 0.6
    assert np.min(ious) >= 0.3


def test_none_masks_are_empty(synthetic_frames_dir, tmp_path):
    compute_masks(
        synthetic_frames_dir, None, None, None, tmp_path / "m", MasksConfig(backend="none")
    )
    masks = [read_mask(p) for p in list_frames(tmp_path / "m")]
    assert len(masks) == len(list_frames(synthetic_frames_dir)) and not np.any(masks)


def _frames(folder, w, h, n=3):
    """``n`` textured frames (h, w, 3) moving 1 px right per frame."""
    from nsff_core.model.io import write_image

    folder.mkdir(parents=True)
    base = np.random.default_rng(0).integers(0, 255, (h, w + n, 3), dtype=np.uint8)
    for i in range(n):
        write_image(folder / frame_name(i), np.ascontiguousarray(base[:, n - i : n - i + w]))
    return folder


@pytest.mark.parametrize(("w", "h"), [(32, 32), (96, 32), (32, 96)])
def test_flow_and_masks_run_at_the_minimum_frame_size(tmp_path, w, h):
    # the frames rule refuses sides below MIN_FRAME_SIDE; at it, flow and masks must work
    from nsff_core.config import MIN_FRAME_SIDE, FlowConfig
    from nsff_core.priors.flow import compute_flow

    assert min(w, h) == MIN_FRAME_SIDE
    frames = _frames(tmp_path / "frames", w, h)
    dirs = tmp_path / "flow_fw", tmp_path / "flow_bw", tmp_path / "flow_ok"
    for preset in ("ultrafast", "medium"):
        compute_flow(frames, *dirs, FlowConfig(dis_preset=preset), scene="s")
    assert read_flo(dirs[0] / frame_name(0, ".flo")).shape == (h, w, 2)
    compute_masks(frames, *dirs, tmp_path / "masks", MasksConfig(backend="epipolar"), scene="s")
    assert read_mask(tmp_path / "masks" / frame_name(0)).shape == (h, w)


def test_masks_report_a_truncated_flow_file_and_the_folder_to_delete(tmp_path):
    from nsff_core.config import FlowConfig
    from nsff_core.errors import CorruptFileError
    from nsff_core.priors.flow import compute_flow

    frames = _frames(tmp_path / "frames", 48, 32)
    dirs = tmp_path / "flow_fw", tmp_path / "flow_bw", tmp_path / "flow_ok"
    compute_flow(frames, *dirs, FlowConfig(), scene="s")
    bad = dirs[1] / "00001.flo"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(CorruptFileError) as info:
        compute_masks(frames, *dirs, tmp_path / "masks", MasksConfig(backend="epipolar"), scene="s")
    assert info.value.path == str(bad) and info.value.made_by == "flow"
    msg = str(info.value.to_stage_error("s", "masks"))
    assert "rule 'masks'" in msg and str(bad) in msg and "truncated" in msg, msg
    assert f"delete the folder {dirs[1]} and rerun: rule 'flow'" in msg, msg
    assert not (tmp_path / "masks").exists()
