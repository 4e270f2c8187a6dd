"""Rule evaluate (nsff_core.workflow.stages.evaluate); the summary table is tested in test_report.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nsff_core.config import SyntheticConfig
from nsff_core.errors import StageError
from nsff_core.model import io
from nsff_core.model.cameras import invert_rigid, rotation_angle_deg, transform_c2w
from nsff_core.model.synthetic import rotation
from nsff_core.workflow.stages.evaluate import (
    Scorer,
    align_to_sfm,
    evaluate_scene,
    novel_cameras_in_sfm,
)

# a known similarity true world -> "SfM" world
SIM_S, SIM_T = 2.5, np.array([0.3, -1.0, 4.0])
SIM_R = rotation([0.3, -1.0, 0.5], 0.7)


@pytest.fixture(scope="module")
def gt_scene():
    from nsff_core.model.synthetic import render_scene

    cfg = SyntheticConfig(num_frames=4, width=48, height=32, novel_offsets=((0.0, -0.15, 0.0),))
    return render_scene(cfg)


@pytest.fixture()
def offline_lpips(tmp_path, monkeypatch):
    """No LPIPS weights anywhere (as on an offline machine)."""
    monkeypatch.setenv("NSFF_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))


@pytest.fixture(scope="module")
def scene_dir(gt_scene, tmp_path_factory):
    """results/<scene>/ of the tiny synthetic scene: frames, masks, cameras.npz (the true
    cameras through a known similarity), gt/scene.npz, an untrained checkpoint and the
    test-split render."""
    import pytorch_lightning as pl
    import torch

    from nsff_core.config import TrainConfig
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.rays import normalize_poses
    from nsff_core.model.synthetic import write_scene
    from nsff_core.model.system import NSFFSystem
    from nsff_core.workflow.stages.render_split import render_split

    d = tmp_path_factory.mktemp("evalscene")
    n, hw = gt_scene.num_frames, gt_scene.hw
    (d / "frames").mkdir()
    (d / "masks").mkdir()
    for i in range(n):
        io.write_image(d / "frames" / io.frame_name(i), gt_scene.images[i])
        mask = gt_scene.dynamic_mask[i] if i != 1 else np.zeros(hw, bool)  # frame 1: empty
        io.write_mask(d / "masks" / io.frame_name(i), mask)
    c2w = transform_c2w(SIM_S, SIM_R, SIM_T, gt_scene.c2w)
    io.write_cameras(
        d / "cameras.npz",
        c2w,
        gt_scene.K,
        hw,
        np.full(n, 1.0),
        np.full(n, 30.0),
        [io.frame_name(i) for i in range(n)],
    )
    write_scene(gt_scene, d / "source" / "video.mp4", d / "gt" / "scene.npz")
    near = 0.75 * SIM_S * float(gt_scene.depth.min())
    c2w_nsff, norm = normalize_poses(c2w, near)
    cfg = TrainConfig(width=16, depth=2, time_dim=4, num_samples=8, batch_size=32)
    torch.manual_seed(0)
    system = NSFFSystem(cfg, SceneMeta(n, gt_scene.K, c2w_nsff, normalization=norm), 5)
    (d / "train").mkdir()
    torch.save(
        {
            "state_dict": system.state_dict(),
            "hyper_parameters": dict(system.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        d / "train" / "last.ckpt",
    )
    render_split(d / "train" / "last.ckpt", d / "cameras.npz", "test", d / "render", scene="s")
    return d


# --------------------------------------------------------------------------- alignment


def test_alignment_recovers_similarity_and_maps_held_out_poses(gt_scene):
    sfm = transform_c2w(SIM_S, SIM_R, SIM_T, gt_scene.c2w)
    a = align_to_sfm(sfm, gt_scene.c2w)
    assert a.rotation_from == "centres"
    assert a.s == pytest.approx(SIM_S, rel=1e-9)
    np.testing.assert_allclose(a.R, SIM_R, atol=1e-9)
    np.testing.assert_allclose(a.t, SIM_T, atol=1e-9)
    assert a.centre_rms_pct < 1e-9 and a.rot_mean_deg < 1e-5
    novel = a.map_c2w(gt_scene.novel_c2w)  # (N, V, 4, 4)
    assert novel.shape == gt_scene.novel_c2w.shape
    for t in range(gt_scene.num_frames):
        true = gt_scene.novel_c2w[t, 0]
        # rotation R R_true, centre s R c + t
        np.testing.assert_allclose(novel[t, 0, :3, :3], SIM_R @ true[:3, :3], atol=1e-9)
        np.testing.assert_allclose(novel[t, 0, :3, 3], SIM_S * SIM_R @ true[:3, 3] + SIM_T)
        # seen from the SfM training camera of the same time: the true offset, scaled by s
        rel = invert_rigid(sfm[t]) @ novel[t, 0]
        np.testing.assert_allclose(rel[:3, :3], np.eye(3), atol=1e-9)
        np.testing.assert_allclose(rel[:3, 3], SIM_S * gt_scene.novel_offsets[0], atol=1e-9)


def test_relative_novel_poses_follow_each_sfm_camera_where_the_alignment_cannot(gt_scene):
    # SfM exact up to the similarity, except camera 1 turned by 1 deg and camera 2 unregistered
    sfm = transform_c2w(SIM_S, SIM_R, SIM_T, gt_scene.c2w)
    turn = rotation(np.array([0.0, 1.0, 0.0]), np.deg2rad(1.0))
    sfm[1, :3, :3] = sfm[1, :3, :3] @ turn
    sfm[2, :3, 3] += 5.0
    registered = np.ones(len(sfm), bool)
    registered[2] = False
    a = align_to_sfm(sfm, gt_scene.c2w, registered)
    aligned = novel_cameras_in_sfm(a, sfm, gt_scene.c2w, gt_scene.novel_c2w, "aligned")
    rel = novel_cameras_in_sfm(a, sfm, gt_scene.c2w, gt_scene.novel_c2w, "relative", registered)
    assert rel.shape == aligned.shape == gt_scene.novel_c2w.shape
    for t in range(gt_scene.num_frames):
        # from the SfM camera of its time, the relative pose is the true offset times s ...
        seen = invert_rigid(sfm[t]) @ rel[t, 0]
        if t != 2:
            np.testing.assert_allclose(seen[:3, :3], np.eye(3), atol=1e-9)
            np.testing.assert_allclose(seen[:3, 3], a.s * gt_scene.novel_offsets[0], atol=1e-9)
    # ... so it turns with camera 1, while the aligned pose keeps the true orientation
    assert rotation_angle_deg(rel[1, 0, :3, :3], aligned[1, 0, :3, :3]) == pytest.approx(1.0)
    # where SfM is exact both agree; the unregistered camera takes the aligned pose
    np.testing.assert_allclose(rel[0], aligned[0], atol=1e-9)
    np.testing.assert_allclose(rel[2], aligned[2], atol=1e-12)
    with pytest.raises(ValueError, match="novel_poses"):
        novel_cameras_in_sfm(a, sfm, gt_scene.c2w, gt_scene.novel_c2w, "nearest")


def test_alignment_ignores_unregistered_and_reports_residual(gt_scene):
    sfm = transform_c2w(SIM_S, SIM_R, SIM_T, gt_scene.c2w)
    bad = sfm.copy()
    bad[2, :3, 3] += 5.0  # an interpolated (unregistered) camera far off
    use = np.ones(len(sfm), bool)
    use[2] = False
    a = align_to_sfm(bad, gt_scene.c2w, use)
    assert a.cameras == 3 and a.s == pytest.approx(SIM_S)
    assert align_to_sfm(bad, gt_scene.c2w).centre_rms_pct > 1.0


def test_alignment_of_collinear_centres_uses_orientations():
    from nsff_core.model.synthetic import look_at

    true = np.stack([look_at([x, 0.0, 0.0], [0.2 * x, 0.3, 5.0]) for x in np.linspace(-1, 1, 6)])
    sfm = transform_c2w(SIM_S, SIM_R, SIM_T, true)
    a = align_to_sfm(sfm, true)
    assert a.rotation_from == "orientations"
    np.testing.assert_allclose(a.R, SIM_R, atol=1e-9)
    assert a.s == pytest.approx(SIM_S) and a.centre_rms < 1e-9
    with pytest.raises(ValueError, match="at least 3"):
        align_to_sfm(sfm[:2], true[:2])


# --------------------------------------------------------------------------- metrics


def test_dynamic_region_ignores_differences_outside_the_mask(offline_lpips):
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), bool)
    mask[10:30, 12:36] = True
    # differ only farther than the SSIM window radius (5 px) from the mask
    far = np.ones_like(mask)
    far[4:36, 6:42] = False
    pred = target.copy()
    pred[far] = 255 - pred[far]
    scorer = Scorer()
    assert scorer.lpips_state.startswith("unavailable:")
    inside = scorer.score(pred, target, mask)
    assert inside["psnr"] == math.inf and inside["ssim"] == pytest.approx(1.0)
    assert math.isnan(inside["lpips"])
    full = scorer.score(pred, target)
    assert math.isfinite(full["psnr"]) and full["psnr"] < 20 and full["ssim"] < 0.9
    empty = scorer.score(pred, target, np.zeros_like(mask))
    assert all(math.isnan(v) for v in empty.values())
    # with an LPIPS module (random weights: checks the wiring, not the metric's value)
    from nsff_core.model.metrics import build_lpips

    # (LPIPS's deep layers see past the mask, so inside is small but not exactly 0)
    scorer.model = build_lpips(random_init=True)
    inside, full = scorer.score(pred, target, mask)["lpips"], scorer.score(pred, target)["lpips"]
    assert 0 <= inside < 0.2 * full


# --------------------------------------------------------------------------- LPIPS weights


def random_lpips_files(folder, names=("test_backbone_random.pth", "test_linear_random.pth")):
    """The two LPIPS weight files, with seeded random weights (the wiring, not the metric), and
    the module they hold. The default names are no registry file's, so loaders take them
    unchecked (registry names would be hash-checked against the real checkpoints)."""
    import torch

    from nsff_core.model.metrics import LPIPS_ALEX_CHANNELS, build_lpips

    model = build_lpips(random_init=True, seed=3)
    backbone = {f"features.{k}": v for k, v in model.net.state_dict().items()}
    linear = {
        f"lin{k}.model.1.weight": getattr(model, f"lin{k}").model[1].weight
        for k in range(len(LPIPS_ALEX_CHANNELS))
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / names[0], folder / names[1]
    torch.save(backbone, paths[0])
    torch.save(linear, paths[1])
    return model, paths


def write_marker(path, listed, unavailable=None):
    """A marker as rule weights_evaluate writes it (the keys evaluate reads)."""
    weights = {name: {"path": str(p)} for name, p in listed.items()}
    path.write_text(json.dumps({"weights": weights, "unavailable": unavailable or {}}))
    return path


def test_scorer_takes_the_lpips_files_from_the_marker(tmp_path, offline_lpips):
    from nsff_core.model.metrics import lpips
    from nsff_core.priors.weights import entry_for_file

    model, (backbone, linear) = random_lpips_files(tmp_path / "mine")
    assert entry_for_file(backbone.name) is None and entry_for_file(linear.name) is None
    marker = write_marker(
        tmp_path / "weights_evaluate.json", {"alexnet": backbone, "lpips_alex": linear}
    )
    assert Scorer().lpips_state.startswith("unavailable:")  # nothing to be found by searching
    scorer = Scorer(scene="s", weights_marker=marker)
    assert scorer.lpips_state == f"available: AlexNet v0.1 ({backbone}, {linear})"
    rng = np.random.default_rng(1)
    pred, target = rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    got = scorer.score(pred, target)["lpips"]
    want = lpips(pred / 255.0, target / 255.0, model=model)
    assert got > 0 and got == pytest.approx(want, rel=1e-6)


def test_a_marker_without_the_files_leaves_lpips_unavailable_with_its_reason(
    tmp_path, offline_lpips
):
    marker = write_marker(
        tmp_path / "weights_evaluate.json",
        {},
        {"alexnet": "downloads are off", "lpips_alex": "downloads are off"},
    )
    state = Scorer(weights_marker=marker).lpips_state
    assert state.startswith("unavailable: missing AlexNet backbone")  # the search's reason
    assert "Rule weights_evaluate: alexnet: downloads are off; lpips_alex: downloads" in state


def test_a_gone_marker_file_falls_back_to_the_search(tmp_path, monkeypatch):
    """The marker's backbone is gone: evaluate searches $NSFF_WEIGHTS_DIR as before. The files
    there carry the lpips package's names, so their digests are recorded as the test's own
    (a registry name's first use would check the real AlexNet's hash prefix)."""
    import hashlib

    folder = tmp_path / "weights_dir"
    _, found = random_lpips_files(folder, ("alexnet.pth", "alex.pth"))
    files = {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "source": "the test's own"}
        for p in found
    }
    (folder / "sha256.json").write_text(json.dumps({"files": files}))
    monkeypatch.setenv("NSFF_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    _, (backbone, linear) = random_lpips_files(tmp_path / "mine")
    backbone.unlink()
    marker = write_marker(tmp_path / "m.json", {"alexnet": backbone, "lpips_alex": linear})
    from nsff_core.workflow.stages.evaluate import lpips_files_from_marker

    assert lpips_files_from_marker(marker) == (
        None,
        f"alexnet: {backbone} (listed in {marker}) is gone",
    )
    scorer = Scorer(weights_marker=marker)
    assert scorer.lpips_state == f"available: AlexNet v0.1 ({found[0]}, {found[1]})"


def test_a_damaged_marker_names_scene_and_rule(tmp_path):
    marker = tmp_path / "weights_evaluate.json"
    marker.write_text("{not json")
    with pytest.raises(StageError, match="scene 's', rule 'evaluate'") as info:
        Scorer(scene="s", weights_marker=marker)
    assert str(marker) in str(info.value) and "rule weights_evaluate writes it again" in str(
        info.value
    )


# --------------------------------------------------------------------------- evaluate_scene


def test_evaluate_scene_scores_lpips_with_the_markers_files(scene_dir, tmp_path, offline_lpips):
    _, (backbone, linear) = random_lpips_files(tmp_path / "mine")
    marker = write_marker(tmp_path / "w.json", {"alexnet": backbone, "lpips_alex": linear})
    out = tmp_path / "eval" / "metrics.json"
    evaluate_scene(
        scene_dir / "train" / "last.ckpt",
        scene_dir / "cameras.npz",
        scene_dir / "frames",
        scene_dir / "masks",
        scene_dir / "render" / "test",
        out,
        scene="s",
        weights_marker=marker,
    )
    m = json.loads(out.read_text())
    assert m["lpips_state"] == f"available: AlexNet v0.1 ({backbone}, {linear})"
    lp = m["test"]["per_frame"]["lpips"]
    assert len(lp) == m["frames"] and all(v is not None and v >= 0 for v in lp)
    assert m["test"]["mean"]["lpips"] == pytest.approx(np.mean(lp))


# --------------------------------------------------------------------------- evaluate_scene


def test_evaluate_scene_end_to_end(scene_dir, gt_scene, tmp_path, offline_lpips):
    out = tmp_path / "eval" / "metrics.json"
    evaluate_scene(
        scene_dir / "train" / "last.ckpt",
        scene_dir / "cameras.npz",
        scene_dir / "frames",
        scene_dir / "masks",
        scene_dir / "render" / "test",
        out,
        gt=scene_dir / "gt" / "scene.npz",
        chunk=2048,
        scene="s",
    )
    m = json.loads(out.read_text())  # strict JSON: non-finite values are null
    n = gt_scene.num_frames
    assert m["scene"] == "s" and m["frames"] == n and m["split"] == "test"
    assert m["lpips_state"].startswith("unavailable:")
    test = m["test"]
    for key in ("psnr", "ssim", "lpips", "psnr_dynamic", "ssim_dynamic", "lpips_dynamic"):
        assert len(test["per_frame"][key]) == n and key in test["mean"]
    assert all(math.isfinite(v) for v in test["per_frame"]["psnr"])
    assert math.isfinite(test["mean"]["psnr"]) and -1 <= test["mean"]["ssim"] <= 1
    assert test["mean"]["lpips"] is None and test["per_frame"]["lpips"] == [None] * n
    assert test["per_frame"]["psnr_dynamic"][1] is None  # empty mask
    assert math.isfinite(test["mean"]["psnr_dynamic"])  # nanmean over the other frames
    novel = m["novel"]
    assert novel["views"] == 1 and novel["count"] == n and novel["time"] == list(range(n))
    assert novel["alignment"]["centre_rms_pct_path"] < 1e-6
    assert novel["alignment"]["scale"] == pytest.approx(SIM_S)
    assert all(math.isfinite(v) for v in novel["per_frame"]["psnr"])
    base = novel["baseline"]["mean"]
    assert math.isfinite(base["psnr"]) and math.isfinite(base["ssim"])
    pngs = sorted((tmp_path / "eval" / "novel").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}_v0.png" for t in range(n)]
    assert io.read_image(pngs[0]).shape == (*gt_scene.hw, 3)


def test_held_out_views_of_a_larger_ground_truth_are_scaled(scene_dir, gt_scene, tmp_path):
    """A synthetic scene rendered larger than its training frames (a suite preset at `width:
    320`) scores its held-out views at the training size; another aspect ratio is refused."""
    from nsff_core.model.synthetic import render_scene, write_scene
    from nsff_core.workflow.stages.evaluate import evaluate_novel_views

    cams = io.read_cameras(scene_dir / "cameras.npz")
    frames = io.list_frames(scene_dir / "frames")
    ckpt = scene_dir / "train" / "last.ckpt"
    for size, ok in (((96, 64), True), ((96, 48), False)):
        cfg = SyntheticConfig(
            num_frames=4, width=size[0], height=size[1], novel_offsets=((0.0, -0.15, 0.0),)
        )
        big = render_scene(cfg)
        gt_path = tmp_path / f"{size[0]}x{size[1]}" / "scene.npz"
        write_scene(big, gt_path.parent / "video.mp4", gt_path)
        out = tmp_path / f"novel_{size[0]}x{size[1]}"
        if not ok:
            with pytest.raises(StageError, match="scene 's', rule 'evaluate'.*ground truth is"):
                evaluate_novel_views(ckpt, cams, frames, gt_path, out, Scorer(), 2048, scene="s")
            continue
        m = evaluate_novel_views(ckpt, cams, frames, gt_path, out, Scorer(), 2048, scene="s")
        assert m["count"] == gt_scene.num_frames
        assert all(math.isfinite(v) for v in m["per_frame"]["psnr"])
        # the baseline (the training frame of the same time) against the scaled truth is close
        # to the one against the truth rendered at the training size
        small = [
            Scorer().score(gt_scene.images[t], gt_scene.novel_images[t, 0])["psnr"]
            for t in range(gt_scene.num_frames)
        ]
        assert m["baseline"]["mean"]["psnr"] == pytest.approx(np.mean(small), abs=3.0)


def test_trivial_baseline_compares_different_viewpoints(gt_scene):
    """The baseline compares the held-out view with the training frame of its time."""
    scorer = Scorer()
    s = scorer.score(gt_scene.images[0], gt_scene.novel_images[0, 0])
    assert 5 < s["psnr"] < 40  # different viewpoints: neither identical nor unrelated


def test_missing_test_render_names_scene_and_rule(scene_dir, tmp_path, offline_lpips):
    args = (scene_dir / "train" / "last.ckpt", scene_dir / "cameras.npz")
    dirs = (scene_dir / "frames", scene_dir / "masks")
    with pytest.raises(StageError, match="scene 's', rule 'evaluate'") as err:
        evaluate_scene(*args, *dirs, tmp_path / "nope", tmp_path / "m.json", scene="s")
    assert "render" in str(err.value) and "test" in str(err.value)
    assert not (tmp_path / "m.json").exists()
    # no ground truth: test-split scores only, novel/ explains itself
    m = evaluate_scene(
        *args, *dirs, scene_dir / "render" / "test", tmp_path / "e" / "m.json", scene="s"
    )
    assert m["novel"] is None and (tmp_path / "e" / "novel" / "README.txt").exists()
