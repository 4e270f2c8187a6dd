"""SfM (pycolmap) and the sparse depth prior on the synthetic scene, plus camera helpers.

Quality floors on the 24-frame synthetic scene: every frame registers, camera-centre RMS error
after similarity alignment <= 1% of the GT path length, focal length within 2%, and sparse
disparity with Spearman rank correlation >= 0.8 against the true disparity on static pixels in
every frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from nsff_core.config import DepthConfig, SfmConfig
from nsff_core.errors import StageError
from nsff_core.model import cameras as cam
from nsff_core.model import io

#: frames of the small sequence for the failure tests (every 3rd synthetic frame)
SUBSET = list(range(0, 24, 3))
BLANK = 4  # index in SUBSET replaced by a uniform grey frame (no features: cannot register)


@pytest.fixture(scope="module")
def sfm_run(synthetic_scene, synthetic_frames_dir, tmp_path_factory):
    """Run SfM once on the synthetic frames with GT dynamic masks dilated by 3 px.

    Every PNG of this module is written here, before pycolmap is first used (see sfm.py).
    """
    import cv2

    root = tmp_path_factory.mktemp("sfm_depth")
    masks = root / "masks"
    masks.mkdir()
    kernel = np.ones((7, 7), np.uint8)
    for i, m in enumerate(synthetic_scene.dynamic_mask):
        io.write_mask(masks / io.frame_name(i), cv2.dilate(m.astype(np.uint8), kernel) > 0)

    small = root / "small" / "frames"
    small.mkdir(parents=True)
    for j, i in enumerate(SUBSET):
        img = synthetic_scene.images[i]
        io.write_image(small / io.frame_name(j), np.full_like(img, 128) if j == BLANK else img)

    out = {
        "root": root,
        "frames": synthetic_frames_dir,
        "masks": masks,
        "sfm": root / "sfm",
        "cameras": root / "cameras.npz",
        "poses_bounds": root / "poses_bounds.npy",
        "small": small,
    }
    out["summary"] = _run(out["frames"], masks, root, SfmConfig())
    return out


def _run(frames, masks, root, cfg):
    from nsff_core.priors.sfm import run_sfm

    return run_sfm(
        frames,
        masks,
        root / "sfm",
        root / "cameras.npz",
        root / "poses_bounds.npy",
        cfg,
        scene="synthetic",
    )


@pytest.fixture(scope="module")
def depth_run(sfm_run):
    from nsff_core.priors.depth import compute_depth

    disp = sfm_run["root"] / "disp"
    summary = compute_depth(
        sfm_run["frames"],
        sfm_run["masks"],
        sfm_run["sfm"],
        sfm_run["cameras"],
        disp,
        DepthConfig(),
        scene="synthetic",
    )
    return disp, summary


# --------------------------------------------------------------------------- SfM quality


@pytest.mark.stage
def test_sfm_quality(sfm_run, synthetic_scene):
    s = sfm_run["summary"]
    gt = synthetic_scene
    c = io.read_cameras(sfm_run["cameras"])
    err = cam.pose_error(c["c2w"], gt.c2w)
    focal_err = abs(c["K"][0, 0] / gt.K[0, 0] - 1)
    print(
        f"\nSfM: {s['num_registered']}/{s['num_frames']} registered, "
        f"centre RMS {100 * err['centre_rms_rel']:.3f}% of path, "
        f"rotation {err['rot_mean_deg']:.3f} deg, focal error {100 * focal_err:.2f}%, "
        f"reprojection {s['mean_reprojection_error_px']:.3f} px, {s['num_points3D']} points, "
        f"{s['timings_s']['total']:.1f} s"
    )
    assert s["num_registered"] == gt.num_frames and s["unregistered"] == []
    assert c["registered"].all()
    assert err["centre_rms_rel"] <= 0.01
    assert err["rot_mean_deg"] <= 0.5
    assert focal_err <= 0.02
    assert s["mean_reprojection_error_px"] < 1.0

    # near/far bracket the scene: scaled into GT units, they contain the median static depth
    static_depth = np.where(gt.dynamic_mask, np.nan, gt.depth)
    median = np.nanmedian(static_depth.reshape(gt.num_frames, -1), axis=1)
    assert np.all(c["near"] * err["s"] < median) and np.all(median < c["far"] * err["s"])


@pytest.mark.stage
def test_sfm_outputs_and_formats(sfm_run, synthetic_scene):
    sfm = sfm_run["sfm"]
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (sfm / "sparse" / "0" / name).is_file()
    assert (sfm / "database.db").is_file()
    summary = json.loads((sfm / "summary.json").read_text())
    assert summary["num_registered"] == 24 and summary["matching"] == "exhaustive"

    # COLMAP masks: named <image>.png, 0 (= ignore) exactly on the dynamic pixels
    cm = io.read_mask(sfm / "colmap_masks" / "00000.png.png")
    assert np.array_equal(cm, ~io.read_mask(sfm_run["masks"] / "00000.png"))

    c = io.read_cameras(sfm_run["cameras"])
    n = synthetic_scene.num_frames
    assert c["c2w"].shape == (n, 4, 4) and c["K"].shape == (3, 3)
    assert tuple(c["hw"]) == (180, 320)
    assert list(c["names"]) == [io.frame_name(i) for i in range(n)]
    R = c["c2w"][:, :3, :3]
    np.testing.assert_allclose(
        R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    np.testing.assert_allclose(c["c2w"][:, 3], np.broadcast_to([0, 0, 0, 1], (n, 4)))
    assert np.all(c["near"] > 0) and np.all(c["far"] > c["near"])
    # principal point at the image centre in OpenCV pixel convention (as the synthetic K)
    np.testing.assert_allclose(c["K"][:2, 2], synthetic_scene.K[:2, 2])

    pb = np.load(sfm_run["poses_bounds"])
    assert pb.shape == (n, 17)
    c2w, hwf, bounds = cam.c2w_from_poses_bounds(pb)
    np.testing.assert_allclose(c2w, c["c2w"], atol=1e-12)
    np.testing.assert_allclose(hwf, np.broadcast_to([180, 320, c["K"][0, 0]], (n, 3)))
    np.testing.assert_allclose(bounds, np.stack([c["near"], c["far"]], -1))
    # LLFF column order (down, right, back) = OpenCV (y, x, -z)
    mats = pb[:, :15].reshape(n, 3, 5)
    np.testing.assert_allclose(mats[:, :, 0], c["c2w"][:, :3, 1])
    np.testing.assert_allclose(mats[:, :, 2], -c["c2w"][:, :3, 2])


@pytest.mark.stage
def test_cameras_reproject_sfm_points(sfm_run, synthetic_scene):
    """cameras.npz (K, c2w, pixel convention) maps the SfM points onto their observations,
    and no observation lies on a moving object (the masks reached feature extraction)."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(sfm_run["sfm"] / "sparse" / "0"))
    c = io.read_cameras(sfm_run["cameras"])
    index = {str(n): i for i, n in enumerate(c["names"])}
    errs, on_dynamic = [], 0
    for img in rec.images.values():
        i = index[img.name]
        obs = img.get_observation_points2D()
        xyz = np.array([rec.points3D[p.point3D_id].xyz for p in obs])
        seen = cam.colmap_to_opencv_pixels(np.array([p.xy for p in obs]))
        xy, z = cam.project(c["K"], c["c2w"][i], xyz)
        assert np.all(z > 0)
        errs.append(np.linalg.norm(xy - seen, axis=1))
        px = np.rint(seen).astype(int)
        on_dynamic += int(synthetic_scene.dynamic_mask[i][px[:, 1], px[:, 0]].sum())
    assert np.mean(np.concatenate(errs)) < 1.0
    assert on_dynamic == 0


# --------------------------------------------------------------------------- SfM failures


@pytest.mark.stage
def test_sfm_too_few_registered_raises(sfm_run, tmp_path):
    with pytest.raises(StageError) as info:
        _run(sfm_run["small"], None, tmp_path, SfmConfig())
    e = info.value
    assert e.stage == "sfm" and e.scene == "synthetic"
    assert "7 of 8" in e.cause and io.frame_name(BLANK) in e.cause
    assert "min_registered_fraction" in e.hint
    assert not (tmp_path / "cameras.npz").exists()
    assert not (tmp_path / "poses_bounds.npy").exists()
    assert not (tmp_path / "sfm").exists()


@pytest.mark.stage
def test_sfm_partial_registration_interpolates(sfm_run, synthetic_scene, tmp_path):
    from nsff_core.priors.depth import compute_depth

    summary = _run(sfm_run["small"], None, tmp_path, SfmConfig(min_registered_fraction=0.8))
    assert summary["unregistered"] == [io.frame_name(BLANK)]
    c = io.read_cameras(tmp_path / "cameras.npz")
    assert c["registered"].tolist() == [j != BLANK for j in range(len(SUBSET))]

    gt = synthetic_scene.c2w[SUBSET]
    reg = c["registered"]
    err = cam.pose_error(c["c2w"][reg], gt[reg])
    aligned = cam.transform_c2w(err["s"], err["R"], err["t"], c["c2w"])
    step = np.linalg.norm(gt[BLANK + 1, :3, 3] - gt[BLANK, :3, 3])
    assert np.linalg.norm(aligned[BLANK, :3, 3] - gt[BLANK, :3, 3]) < 0.2 * step

    # the depth prior still covers the interpolated frame (points projected into it)
    disp = tmp_path / "disp"
    compute_depth(
        sfm_run["small"],
        None,
        tmp_path / "sfm",
        tmp_path / "cameras.npz",
        disp,
        DepthConfig(densify="linear"),
    )
    assert len(list(disp.glob("*.npy"))) == len(SUBSET)


# --------------------------------------------------------------------------- depth


@pytest.mark.stage
def test_sparse_depth_correlates_with_truth(depth_run, synthetic_scene):
    from scipy.stats import spearmanr

    disp_dir, summary = depth_run
    gt = synthetic_scene
    rhos = []
    for i in range(gt.num_frames):
        d = io.read_disparity(disp_dir / io.frame_name(i, ".npy"))
        assert d.shape == (180, 320) and d.dtype == np.float32 and np.isfinite(d).all()
        static = ~gt.dynamic_mask[i]
        rhos.append(spearmanr(d[static], 1.0 / gt.depth[i][static]).statistic)
    rhos = np.array(rhos)
    print(
        f"\nsparse depth ({summary['densify']}): Spearman mean {rhos.mean():.3f}, "
        f"min {rhos.min():.3f}; points per frame min {summary['min_points']}, "
        f"{summary['time_s']:.1f} s"
    )
    assert rhos.min() >= 0.8
    assert rhos.mean() >= 0.85


@pytest.mark.stage
def test_depth_too_few_points_raises(sfm_run, tmp_path):
    from nsff_core.priors.depth import compute_depth

    disp = tmp_path / "disp"
    with pytest.raises(StageError) as info:
        compute_depth(
            sfm_run["frames"],
            sfm_run["masks"],
            sfm_run["sfm"],
            sfm_run["cameras"],
            disp,
            DepthConfig(min_points=100_000),
            scene="synthetic",
        )
    assert info.value.stage == "depth" and "00000.png" in info.value.cause
    assert not disp.exists()


def test_depth_unknown_backend(tmp_path):
    from nsff_core.priors.depth import compute_depth

    with pytest.raises(StageError, match="unknown depth backend"):
        compute_depth(
            tmp_path,
            None,
            tmp_path,
            tmp_path / "c.npz",
            tmp_path / "d",
            DepthConfig(backend="nope"),
        )


def test_densify_linear_recovers_plane():
    """Linear densification reproduces a planar disparity exactly inside the samples' hull."""
    from nsff_core.priors.depth import densify_linear

    rng = np.random.default_rng(0)
    h, w = 40, 60
    xy = rng.uniform([0, 0], [w - 1, h - 1], (300, 2))
    xy = np.concatenate([xy, [[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]]])
    v = 0.2 + 0.004 * xy[:, 0] + 0.002 * xy[:, 1]
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    d = densify_linear(xy, v, (h, w), smooth_sigma=0)
    np.testing.assert_allclose(d, 0.2 + 0.004 * gx + 0.002 * gy, atol=1e-5)


def test_densify_edge_aware_keeps_depth_edges():
    """A colour edge that is also a depth edge stays sharp (linear interpolation blurs it)."""
    from nsff_core.priors.depth import densify_edge_aware, densify_linear

    rng = np.random.default_rng(0)
    h, w = 40, 60
    image = np.full((h, w, 3), 60, np.uint8)
    image[:, 30:] = 200
    xy = np.rint(rng.uniform([0, 0], [w - 1, h - 1], (60, 2)))
    v = np.where(xy[:, 0] < 30, 0.2, 0.5)
    truth = np.broadcast_to(np.where(np.arange(w) < 30, 0.2, 0.5), (h, w))
    assert np.abs(densify_edge_aware(xy, v, image) - truth).max() < 0.01
    assert np.abs(densify_linear(xy, v, (h, w), 0) - truth).max() > 0.1


def test_reject_outliers():
    from nsff_core.priors.depth import reject_outliers

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (200, 2))
    v = 0.2 + 0.001 * xy[:, 0]
    v[7] *= 5
    keep = reject_outliers(xy, v)
    assert not keep[7] and keep.sum() == len(v) - 1


# --------------------------------------------------------------------------- camera helpers


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    R = Rotation.random(random_state=2).as_matrix()
    s, t = 2.5, np.array([1.0, -3.0, 0.5])
    dst = s * src @ R.T + t
    s_e, R_e, t_e = cam.umeyama(src, dst)
    assert s_e == pytest.approx(s)
    np.testing.assert_allclose(R_e, R, atol=1e-10)
    np.testing.assert_allclose(t_e, t, atol=1e-10)
    np.testing.assert_allclose(cam.apply_similarity(s_e, R_e, t_e, src), dst, atol=1e-10)

    # a reflection in the data must still give a proper rotation
    _, R_r, _ = cam.umeyama(src, src * [1, 1, -1])
    assert np.linalg.det(R_r) == pytest.approx(1.0)
    s_1, _, _ = cam.umeyama(src, dst, with_scale=False)
    assert s_1 == 1.0

    # pose_error is zero for poses that differ by a similarity only
    c2w = cam.rigid_matrix(Rotation.random(10, random_state=3).as_matrix(), src[:10])
    moved = cam.transform_c2w(1 / s, R.T, -R.T @ t / s, c2w)
    e = cam.pose_error(moved, c2w)
    assert e["centre_rms"] < 1e-9 and e["rot_mean_deg"] < 1e-5
    assert e["path_length"] == pytest.approx(cam.path_length(src[:10]))


def test_interpolate_poses():
    R0 = np.eye(3)
    R1 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    c2w = cam.rigid_matrix(np.stack([R0, R1]), np.array([[0.0, 0, 0], [2.0, 4.0, 0]]))
    out = cam.interpolate_poses(np.array([0.0, 2.0]), c2w, np.array([-1.0, 0.0, 0.5, 1.0, 3.0]))
    np.testing.assert_allclose(out[1], c2w[0], atol=1e-12)  # known times reproduce the poses
    np.testing.assert_allclose(out[0], c2w[0], atol=1e-12)  # clamped before the first
    np.testing.assert_allclose(out[4], c2w[1], atol=1e-12)  # and after the last
    np.testing.assert_allclose(out[3, :3, 3], [1.0, 2.0, 0.0])
    np.testing.assert_allclose(
        out[3, :3, :3], Rotation.from_euler("z", 45, degrees=True).as_matrix(), atol=1e-12
    )
    np.testing.assert_allclose(
        out[2, :3, :3], Rotation.from_euler("z", 22.5, degrees=True).as_matrix(), atol=1e-12
    )


def test_rigid_helpers_and_intrinsics():
    rng = np.random.default_rng(4)
    T = cam.rigid_matrix(Rotation.random(5, random_state=5).as_matrix(), rng.normal(size=(5, 3)))
    np.testing.assert_allclose(
        cam.invert_rigid(T) @ T, np.broadcast_to(np.eye(4), T.shape), atol=1e-12
    )

    # a point projects to the same place (relative to the image edges) after rescaling K
    K = cam.intrinsics_matrix(100.0, 100.0, 159.5, 89.5)
    K2 = cam.scale_intrinsics(K, (180, 320), (360, 640))
    np.testing.assert_allclose(K2, cam.intrinsics_matrix(200.0, 200.0, 319.5, 179.5))
    pts = np.array([[0.3, -0.2, 2.0]])
    xy, z = cam.project(K, np.eye(4), pts)
    xy2, _ = cam.project(K2, np.eye(4), pts)
    np.testing.assert_allclose((xy2 + 0.5) / 2, xy + 0.5)
    assert z[0] == pytest.approx(2.0)


def test_path_is_importable_without_pycolmap():
    """Importing the stage modules must not import pycolmap (zlib clash, import time)."""
    import subprocess
    import sys

    code = (
        "import sys, nsff_core.priors.sfm, nsff_core.priors.depth, nsff_core.model.cameras; "
        "assert 'pycolmap' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_depth_reports_a_corrupt_cameras_file_with_the_rule_that_writes_it(tmp_path):
    from nsff_core.errors import CorruptFileError
    from nsff_core.priors.depth import compute_depth

    cameras = tmp_path / "cameras.npz"
    n = 3
    io.write_cameras(
        cameras, np.tile(np.eye(4), (n, 1, 1)), np.eye(3), (32, 40), np.ones(n), 2 * np.ones(n),
        [io.frame_name(i) for i in range(n)],
    )  # fmt: skip
    cameras.write_bytes(cameras.read_bytes()[:-100])  # a kill during the copy, a full disk
    disp = tmp_path / "disp"
    with pytest.raises(CorruptFileError) as info:
        compute_depth(tmp_path, None, tmp_path, cameras, disp, DepthConfig(), scene="s")
    assert info.value.path == str(cameras) and info.value.made_by == "sfm"
    msg = str(info.value.to_stage_error("s", "depth"))
    assert "rule 'depth'" in msg and f"delete {cameras} and rerun: rule 'sfm'" in msg, msg
    assert not disp.exists()
