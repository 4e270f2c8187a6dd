"""SfM on source-resolution frames, intrinsics at the training size, mapping retries for split
models, the focal-length prior and the field-of-view warning (synthetic data only)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from nsff_core.config import FramesConfig, SfmConfig
from nsff_core.errors import StageError
from nsff_core.model import cameras as cam
from nsff_core.model import io
from nsff_core.priors import sfm

#: training width of the source test: 320x180 source frames give 242x136 training frames, whose
#: rounded height makes the x and y scales differ (242/320 = 0.75625, 136/180 = 0.7556)
TRAIN_WIDTH = 242
#: frames of the short sequence used by the prior and split tests (every 2nd synthetic frame)
SHORT = list(range(0, 24, 2))


def _dilated(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0


@pytest.fixture(scope="module")
def inputs(synthetic_scene, synthetic_frames_dir, tmp_path_factory):
    """Every 2nd frame of the synthetic scene with frames.json and true dynamic masks (dilated):
    ``small`` at 242x136 from its 320x180 frames as the source, ``short`` at 320x180.

    Every PNG of this module is written here, before pycolmap is first used (see sfm.py).
    """
    import cv2

    from nsff_core.priors.frames import extract_frames

    root = tmp_path_factory.mktemp("sfm")
    small = root / "small"
    extract_frames(
        synthetic_frames_dir,
        small / "frames",
        small / "frames.json",
        FramesConfig(width=TRAIN_WIDTH, stride=2),
        scene="synthetic",
    )
    hw = io.read_image(small / "frames" / "00000.png").shape[:2]
    (small / "masks").mkdir()
    for j, i in enumerate(SHORT):
        m = synthetic_scene.dynamic_mask[i]
        # any training pixel that overlaps the mover counts (area share > 0), then a margin
        down = cv2.resize(m.astype(np.float32), hw[::-1], interpolation=cv2.INTER_AREA) > 0
        io.write_mask(small / "masks" / io.frame_name(j), _dilated(down))

    short = root / "short"
    (short / "frames").mkdir(parents=True)
    (short / "masks").mkdir()
    for j, i in enumerate(SHORT):
        io.write_image(short / "frames" / io.frame_name(j), synthetic_scene.images[i])
        io.write_mask(short / "masks" / io.frame_name(j), _dilated(synthetic_scene.dynamic_mask[i]))
    return {"root": root, "small": small, "short": short, "hw": hw}


def _run(data: Path, out: Path, cfg: SfmConfig, frames_json: bool = False) -> dict:
    return sfm.run_sfm(
        data / "frames",
        data / "masks",
        out / "sfm",
        out / "cameras.npz",
        out / "poses_bounds.npy",
        cfg,
        scene="synthetic",
        **({"frames_json": data / "frames.json"} if frames_json else {}),
    )


# --------------------------------------------------------------------------- intrinsics math


@pytest.mark.parametrize(
    "sfm_hw, hw", [((480, 854), (288, 512)), ((180, 320), (136, 242)), ((540, 960), (720, 1280))]
)
def test_training_intrinsics_maps_pixel_centres_exactly(sfm_hw, hw):
    """A 3D point projects to x_train = (x_sfm + 0.5) * W / W_sfm - 0.5 (and so in y), also
    when the x and y scales differ (training sizes are rounded to even numbers)."""
    rng = np.random.default_rng(0)
    f, pp = 0.9 * sfm_hw[1], (0.5 * sfm_hw[1] + 3.25, 0.5 * sfm_hw[0] - 1.5)  # COLMAP pixels
    K = sfm.training_intrinsics((f, f), pp, sfm_hw, hw)
    # the same camera at the SfM size, OpenCV pixel convention (centre of pixel c at x = c)
    K_sfm = cam.intrinsics_matrix(f, f, pp[0] - 0.5, pp[1] - 0.5)
    pts = rng.uniform([-2, -1, 2], [2, 1, 6], (50, 3))
    xy_sfm, _ = cam.project(K_sfm, np.eye(4), pts)
    xy, _ = cam.project(K, np.eye(4), pts)
    sx, sy = hw[1] / sfm_hw[1], hw[0] / sfm_hw[0]
    np.testing.assert_allclose(xy[:, 0], (xy_sfm[:, 0] + 0.5) * sx - 0.5, rtol=0, atol=1e-9)
    np.testing.assert_allclose(xy[:, 1], (xy_sfm[:, 1] + 0.5) * sy - 0.5, rtol=0, atol=1e-9)
    assert K[0, 0] / K[1, 1] == pytest.approx(sx / sy, rel=1e-12)
    # a principal point at the centre of the SfM image stays at the centre of the training one
    Kc = sfm.training_intrinsics((f, f), (sfm_hw[1] / 2, sfm_hw[0] / 2), sfm_hw, hw)
    np.testing.assert_allclose(Kc[:2, 2], [(hw[1] - 1) / 2, (hw[0] - 1) / 2], atol=1e-12)


def test_fov_and_focal_conversions():
    assert sfm.horizontal_fov_deg(cam.intrinsics_matrix(160, 160, 0, 0), 320) == pytest.approx(90)
    assert sfm.focal_from_fov(90, 320) == pytest.approx(160)
    assert sfm.capped_size((1920, 1080), 1280) == (1280, 720)
    assert sfm.capped_size((1080, 1920), 1280) == (720, 1280)
    assert sfm.capped_size((854, 480), 1280) == (854, 480)


@pytest.mark.parametrize("from_hw, to_hw", [((18, 32), (48, 85)), ((45, 80), (18, 32))])
def test_resize_mask_conservative_keeps_every_dynamic_pixel(from_hw, to_hw):
    """Every output pixel whose footprint overlaps a dynamic input pixel is dynamic, and the
    result is at most one pixel wider than that exact cover."""
    import cv2

    rng = np.random.default_rng(1)
    mask = rng.random(from_hw) < 0.03
    mask[5:9, 10:17] = True

    def overlap(n_out: int, n_in: int) -> np.ndarray:  # (n_out, n_in): the pixels' spans meet
        scale = n_in / n_out
        i = np.arange(n_out)[:, None]
        j = np.arange(n_in)[None, :]
        return (j < (i + 1) * scale - 1e-9) & (j + 1 > i * scale + 1e-9)

    exact = (overlap(to_hw[0], from_hw[0]) @ mask @ overlap(to_hw[1], from_hw[1]).T) > 0
    out = sfm.resize_mask_conservative(mask, to_hw)
    assert out.shape == to_hw and out.dtype == bool
    assert not (exact & ~out).any(), "a dynamic pixel was lost"
    grown = cv2.dilate(exact.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert not (out & ~grown).any()


def test_fov_warning(caplog):
    for fov, warned in ((29.0, True), (31.0, False), (109.0, False), (111.0, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=sfm.log.name):
            sfm._warn_fov(fov, SfmConfig(), "clip")
        assert any("field of view" in r.getMessage() for r in caplog.records) == warned, fov
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=sfm.log.name):
        sfm._warn_fov(20.0, SfmConfig(focal_prior_fov=20.0), "clip")
    (record,) = caplog.records
    assert "clip" in record.getMessage() and "sfm.focal_prior_fov (20 deg)" in record.getMessage()


@pytest.mark.parametrize(
    "cfg, key",
    [
        (SfmConfig(max_size=16), "sfm.max_size"),
        (SfmConfig(focal_prior_fov=180), "focal_prior"),
        (SfmConfig(max_models=0), "sfm.max_models"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, cfg, key):
    (tmp_path / "frames").mkdir()
    for i in range(2):
        io.write_image(tmp_path / "frames" / io.frame_name(i), np.zeros((40, 60, 3), np.uint8))
    with pytest.raises(StageError, match=key) as info:
        sfm.run_sfm(
            tmp_path / "frames",
            None,
            tmp_path / "sfm",
            tmp_path / "c.npz",
            tmp_path / "pb.npy",
            cfg,
            scene="synthetic",
        )
    assert info.value.scene == "synthetic" and info.value.stage == "sfm"
    assert not (tmp_path / "sfm").exists()


def test_only_the_first_mapping_run_is_capped_in_models():
    """sfm.max_models caps the default run; the retries (relaxed: focal held, continuations)
    keep COLMAP's own limit, so a capped first run never limits what a retry may find."""
    import pycolmap

    colmap_default = pycolmap.IncrementalPipelineOptions().max_num_models
    assert colmap_default > 3
    for held in (False, True):
        assert sfm._mapping_options(SfmConfig(max_models=2), False, held).max_num_models == 2
        relaxed = sfm._mapping_options(SfmConfig(max_models=2), True, held)
        assert relaxed.max_num_models == colmap_default
    assert sfm._mapping_options(SfmConfig(), False, False).max_num_models == 3


def test_schema_rejects_bad_sfm_settings():
    import yaml

    from nsff_core.errors import ConfigError
    from nsff_core.workflow.sheet import validate_config

    from .conftest import REPO

    bad = (
        ("max_size", 8),
        ("focal_prior_fov", 0),
        ("focal_prior_fov", "wide"),
        ("deterministic", 1),
        ("max_models", 0),
    )
    for key, value in bad:
        cfg = yaml.safe_load((REPO / "config.yaml").read_text())
        cfg["sfm"][key] = value
        with pytest.raises(ConfigError, match=f"sfm.{key}"):
            validate_config(cfg, REPO / "rules" / "schemas" / "config.schema.yaml")


# --------------------------------------------------------------------------- source frames


@pytest.mark.stage
def test_sfm_on_source_frames_gives_k_at_training_size(inputs, synthetic_scene, tmp_path):
    """SfM runs on the 320x180 source, the cameras come out at 242x136 with the exact K."""
    small, hw = inputs["small"], inputs["hw"]
    assert hw == (136, TRAIN_WIDTH)
    s = _run(small, tmp_path, SfmConfig(), frames_json=True)
    assert s["sfm_size"] == [320, 180] and s["sfm_images"] == "source frames"
    assert s["num_registered"] == len(SHORT) and s["hw"] == list(hw)
    assert not (tmp_path / "sfm" / "images").exists()  # the source copy is removed
    # the synthetic camera turns as it moves: its focal length is fixed by the clip
    assert s["focal"]["sensitivity"] > sfm.FOCAL_MIN_SENSITIVITY
    for j, i in enumerate(SHORT):  # COLMAP masks (0 = ignore) at the SfM size cover the mover
        cm = io.read_mask(tmp_path / "sfm" / "colmap_masks" / f"{io.frame_name(j)}.png")
        assert cm.shape == (180, 320) and not (cm & synthetic_scene.dynamic_mask[i]).any()

    c = io.read_cameras(tmp_path / "cameras.npz")
    assert tuple(c["hw"]) == hw
    K = c["K"]
    sx, sy = hw[1] / 320, hw[0] / 180
    assert K[0, 0] / K[1, 1] == pytest.approx(sx / sy, rel=1e-12)  # fx != fy, exactly
    np.testing.assert_allclose(K[:2, 2], [(hw[1] - 1) / 2, (hw[0] - 1) / 2], atol=1e-9)
    K_true = cam.scale_intrinsics(synthetic_scene.K, (180, 320), hw)
    assert abs(K[0, 0] / K_true[0, 0] - 1) <= 0.02 and abs(K[1, 1] / K_true[1, 1] - 1) <= 0.02
    assert s["hfov_deg"] == pytest.approx(60, abs=1.5)
    err = cam.pose_error(c["c2w"], synthetic_scene.c2w[SHORT])
    assert err["centre_rms_rel"] <= 0.01

    pb = np.load(tmp_path / "poses_bounds.npy")
    _, hwf, _ = cam.c2w_from_poses_bounds(pb)
    np.testing.assert_allclose(hwf[0, :2], hw)

    # the SfM points, projected with the training K, land on their observations (scaled)
    import pycolmap

    rec = pycolmap.Reconstruction(str(tmp_path / "sfm" / "sparse" / "0"))
    index = {str(n): i for i, n in enumerate(c["names"])}
    errs = []
    for img in rec.images.values():
        obs = img.get_observation_points2D()
        xyz = np.array([rec.points3D[p.point3D_id].xyz for p in obs])
        seen = np.array([p.xy for p in obs]) * [sx, sy] - 0.5  # COLMAP pixels to training
        xy, _ = cam.project(K, c["c2w"][index[img.name]], xyz)
        errs.append(np.linalg.norm(xy - seen, axis=1))
    assert np.mean(np.concatenate(errs)) < 1.0


@pytest.mark.stage
def test_sfm_without_max_size_uses_training_frames(inputs, tmp_path):
    s = _run(inputs["small"], tmp_path, SfmConfig(max_size=None), frames_json=True)
    assert s["sfm_size"] == [TRAIN_WIDTH, 136] and s["sfm_images"] == "training frames"


# --------------------------------------------------------------------------- focal prior


@pytest.mark.stage
def test_focal_prior_is_refined_with_parallax_and_kept_without(
    inputs, synthetic_scene, tmp_path, monkeypatch, caplog
):
    """A 50 deg prior on a 60 deg scene: with the synthetic camera's ample parallax bundle
    adjustment moves it to the truth (and lowers the reprojection error clearly); when the
    parallax counts as too small, or the error gain as too small, it stays at the prior
    exactly. The field-of-view warning fires from run_sfm."""
    import pycolmap

    short, f_true = inputs["short"], synthetic_scene.K[0, 0]
    f_prior = sfm.focal_from_fov(50.0, 320)
    s = _run(short, tmp_path / "a", SfmConfig(focal_prior_fov=50.0))
    assert s["focal"]["prior_px"] == pytest.approx(f_prior)
    assert s["focal"]["refined"] and s["focal"]["parallax_deg"] >= sfm.REFINE_MIN_PARALLAX_DEG
    assert s["focal"]["error_gain"] >= sfm.REFINE_MIN_ERROR_GAIN
    assert s["num_registered"] == len(SHORT)
    assert abs(s["focal_px"] / f_true - 1) <= 0.02
    db = pycolmap.Database.open(tmp_path / "a" / "sfm" / "database.db")
    (camera,) = db.read_all_cameras()
    db.close()
    assert camera.has_prior_focal_length and camera.focal_length == pytest.approx(f_prior)

    monkeypatch.setattr(sfm, "REFINE_MIN_PARALLAX_DEG", 90.0)
    monkeypatch.setattr(sfm, "FOV_RANGE_DEG", (55.0, 110.0))
    with caplog.at_level(logging.WARNING, logger=sfm.log.name):
        s = _run(short, tmp_path / "b", SfmConfig(focal_prior_fov=50.0))
    assert not s["focal"]["refined"] and s["num_registered"] == len(SHORT)
    assert s["focal_px"] == pytest.approx(f_prior, rel=1e-9)
    assert s["hfov_deg"] == pytest.approx(50.0)
    assert any("field of view of 50.0 deg" in r.getMessage() for r in caplog.records)

    # enough parallax, but a free focal length must lower the error more than it can
    monkeypatch.setattr(sfm, "REFINE_MIN_PARALLAX_DEG", 3.0)
    monkeypatch.setattr(sfm, "REFINE_MIN_ERROR_GAIN", 1.0)
    s = _run(short, tmp_path / "c", SfmConfig(focal_prior_fov=50.0))
    assert s["focal"]["error_gain"] is not None and not s["focal"]["refined"]
    assert s["focal_px"] == pytest.approx(f_prior, rel=1e-9)


@pytest.mark.stage
def test_free_focal_failure_is_mapped_again_with_the_focal_held(
    inputs, synthetic_scene, tmp_path, monkeypatch
):
    """Without a prior, when mapping with a free focal length leaves frames out (as on a
    short-baseline clip whose focal length drifts), a restart with the focal length held at
    COLMAP's guess (1.2 x the long side) registers every frame; the final bundle adjustment
    then frees the focal length (ample parallax here) and finds the true one. The database
    camera is a guess again afterwards."""
    import pycolmap

    real = pycolmap.incremental_mapping
    held = []

    def free_focal_fails(db, images_dir, out, options, input_path=""):
        held.append(not options.ba_refine_focal_length)
        if options.ba_refine_focal_length:
            options.image_names = [io.frame_name(j) for j in range(len(SHORT) - 3)]
        return real(db, images_dir, out, options=options, input_path=input_path)

    monkeypatch.setattr(pycolmap, "incremental_mapping", free_focal_fails)
    s = _run(inputs["short"], tmp_path, SfmConfig())
    labels = [a["attempt"] for a in s["attempts"]]
    assert labels == ["default", "focal held"]
    assert held == [False, True]
    assert s["num_registered"] == len(SHORT) and s["unregistered"] == []
    assert s["focal"]["held"] and s["focal"]["refined"] and s["focal"]["prior_px"] is None
    assert abs(s["focal_px"] / synthetic_scene.K[0, 0] - 1) <= 0.02
    db = pycolmap.Database.open(tmp_path / "sfm" / "database.db")
    (camera,) = db.read_all_cameras()
    db.close()
    assert not camera.has_prior_focal_length
    assert camera.focal_length == pytest.approx(1.2 * 320)


# --------------------------------------------------------------------------- repeatability


@pytest.mark.stage
@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_runs_schedule_sensitive_steps_on_one_thread(
    inputs, tmp_path, monkeypatch, deterministic
):
    """Feature extraction (COLMAP numbers the images as its threads finish), the mapper and
    bundle adjustment run on one thread when deterministic (matching keeps num_threads, its
    RANSAC seeded); num_threads everywhere otherwise."""
    import pycolmap

    seen: dict[str, list[int]] = {"extract": [], "match": [], "map": [], "seed": []}
    extract, match, mapping = (
        pycolmap.extract_features,
        pycolmap.match_exhaustive,
        pycolmap.incremental_mapping,
    )

    def spy_extract(*args, extraction_options, **kw):
        seen["extract"].append(extraction_options.num_threads)
        return extract(*args, extraction_options=extraction_options, **kw)

    def spy_match(*args, matching_options, verification_options, **kw):
        seen["match"].append(matching_options.num_threads)
        seen["seed"].append(verification_options.ransac.random_seed)
        return match(
            *args,
            matching_options=matching_options,
            verification_options=verification_options,
            **kw,
        )

    def spy_map(db, images_dir, out, options, input_path=""):
        seen["map"] += [options.num_threads, options.mapper.num_threads]
        return mapping(db, images_dir, out, options=options, input_path=input_path)

    monkeypatch.setattr(pycolmap, "extract_features", spy_extract)
    monkeypatch.setattr(pycolmap, "match_exhaustive", spy_match)
    monkeypatch.setattr(pycolmap, "incremental_mapping", spy_map)
    cfg = SfmConfig(num_threads=2, random_seed=3, deterministic=deterministic)
    s = _run(inputs["short"], tmp_path, cfg)
    assert s["num_registered"] == len(SHORT)
    one = 1 if deterministic else 2
    assert seen["extract"] == [one] and seen["match"] == [2] and seen["seed"] == [3]
    assert seen["map"] == [one, one]
    assert sfm.schedule_threads(cfg) == one


@pytest.mark.stage
def test_deterministic_runs_repeat(inputs, tmp_path):
    """Two deterministic runs, with 2 and 4 matching threads: the database numbers the images
    in the frames' order (not in the order extraction threads finish), the verified matches of
    every pair are identical (matching's result does not depend on its threads), and the
    cameras agree.

    The cameras are compared to 1e-2 (scene units; translations here are about 6) and the
    focal length to 0.1 %, not bit for bit: one CI run under load got two models 0.0036 apart
    from identical features and verified matches (COLMAP's mapper, on one thread, registered
    the same images in the same order with 1-5 more points triangulated). The defect this
    test guards against, threads numbering the images, moved the focal length by 1.6 %.
    """
    import pycolmap

    got, geometries = [], []
    for k, threads in enumerate((2, 4)):
        _run(inputs["short"], tmp_path / str(k), SfmConfig(num_threads=threads))
        got.append(io.read_cameras(tmp_path / str(k) / "cameras.npz"))
        db = pycolmap.Database.open(tmp_path / str(k) / "sfm" / "database.db")
        ids = sorted((img.image_id, img.name) for img in db.read_all_images())
        pairs, two_view = db.read_two_view_geometries()
        geometries.append(
            {
                int(p): (int(g.config), np.asarray(g.inlier_matches).copy())
                for p, g in zip(pairs, two_view, strict=True)
            }
        )
        db.close()
        assert [name for _, name in ids] == [io.frame_name(j) for j in range(len(SHORT))]
    assert geometries[0].keys() == geometries[1].keys() and len(geometries[0]) > 0
    for pair, (config, inliers) in geometries[0].items():
        assert geometries[1][pair][0] == config
        np.testing.assert_array_equal(geometries[1][pair][1], inliers)
    np.testing.assert_allclose(got[0]["c2w"], got[1]["c2w"], rtol=0, atol=1e-2)
    np.testing.assert_allclose(got[0]["K"], got[1]["K"], rtol=1e-3)


# --------------------------------------------------------------------------- split models


@pytest.mark.stage
def test_split_models_are_joined(inputs, synthetic_scene, tmp_path, monkeypatch):
    """Every fresh mapper run (the default one and the one with the focal length held) returns
    the sequence in two models (first and second half); the frames of the smaller one are
    registered into the larger, and the cameras are right."""
    import pycolmap

    real = pycolmap.incremental_mapping
    calls = []

    def split_once(db, images_dir, out, options, input_path=""):
        calls.append(str(input_path))
        if input_path:
            return real(db, images_dir, out, options=options, input_path=input_path)
        names = [io.frame_name(j) for j in range(len(SHORT))]
        models = {}
        for k, part in enumerate((names[:7], names[7:])):
            options.image_names = part
            (Path(out) / f"part{k}").mkdir(parents=True)
            got = real(db, images_dir, Path(out) / f"part{k}", options=options)
            models[k] = max(got.values(), key=lambda r: r.num_reg_images())
        options.image_names = []
        return models

    monkeypatch.setattr(pycolmap, "incremental_mapping", split_once)
    s = _run(inputs["short"], tmp_path, SfmConfig())
    first, second, third = s["attempts"]
    assert first["attempt"] == "default" and first["model_sizes"] == [7, 5]
    assert second["attempt"] == "focal held" and second["model_sizes"] == [7, 5]
    assert third["attempt"] == "focal held, extended" and calls[2] != ""
    assert s["num_registered"] == len(SHORT) and s["unregistered"] == []
    c = io.read_cameras(tmp_path / "cameras.npz")
    err = cam.pose_error(c["c2w"], synthetic_scene.c2w[SHORT])
    assert err["centre_rms_rel"] <= 0.01 and err["rot_mean_deg"] <= 0.5


@pytest.mark.stage
def test_unjoinable_split_names_the_missing_frames(inputs, tmp_path, monkeypatch):
    """When no retry registers a frame, the error names it and the attempts are counted."""
    import pycolmap

    real = pycolmap.incremental_mapping

    def without_last(db, images_dir, out, options, input_path=""):
        options.image_names = [io.frame_name(j) for j in range(len(SHORT) - 1)]
        return real(db, images_dir, out, options=options, input_path=input_path)

    monkeypatch.setattr(pycolmap, "incremental_mapping", without_last)
    with pytest.raises(StageError) as info:
        _run(inputs["short"], tmp_path, SfmConfig())
    last = io.frame_name(len(SHORT) - 1)
    assert f"only {len(SHORT) - 1} of {len(SHORT)}" in info.value.cause
    # default (extended after focal held and its extension), relaxed and its extension
    assert last in info.value.cause and "6 mapping attempt(s)" in info.value.cause
    assert not (tmp_path / "sfm").exists() and not (tmp_path / "cameras.npz").exists()


def _text_model(folder: Path, turn_deg: float, f: float = 300.0, noise: float = 0.3):
    """A COLMAP text model of 8 cameras on a sideways path that turn by ``turn_deg`` in all,
    seeing 400 random points 6-12 units away (observations with ``noise`` px of noise)."""
    import pycolmap
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    w, h, n = 320, 180, 8
    pts = np.c_[rng.uniform(-3, 3, 400), rng.uniform(-2, 2, 400), rng.uniform(6, 12, 400)]
    folder.mkdir(parents=True)
    (folder / "cameras.txt").write_text(f"1 SIMPLE_PINHOLE {w} {h} {f} {w / 2} {h / 2}\n")
    tracks: dict[int, list[str]] = {j: [] for j in range(len(pts))}
    lines = []
    for i in range(n):
        t = i / (n - 1) - 0.5
        r_cw = Rotation.from_euler("y", np.radians(turn_deg) * t).as_matrix().T
        t_cw = -r_cw @ np.array([4.0 * t, 0.0, 0.0])
        qx, qy, qz, qw = Rotation.from_matrix(r_cw).as_quat()
        lines.append(f"{i + 1} {qw} {qx} {qy} {qz} {t_cw[0]} {t_cw[1]} {t_cw[2]} 1 {i:05d}.png")
        xc = pts @ r_cw.T + t_cw
        uv = f * xc[:, :2] / xc[:, 2:] + [w / 2, h / 2] + rng.normal(0, noise, (len(pts), 2))
        seen = np.flatnonzero((uv[:, 0] > 0) & (uv[:, 0] < w) & (uv[:, 1] > 0) & (uv[:, 1] < h))
        for k, j in enumerate(seen):
            tracks[j].append(f"{i + 1} {k}")
        lines.append(" ".join(f"{uv[j, 0]} {uv[j, 1]} {j + 1}" for j in seen))
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    points = [
        f"{j + 1} {pts[j, 0]} {pts[j, 1]} {pts[j, 2]} 128 128 128 0.5 " + " ".join(tr)
        for j, tr in tracks.items()
        if len(tr) >= 2
    ]
    (folder / "points3D.txt").write_text("\n".join(points) + "\n")
    rec = pycolmap.Reconstruction(str(folder))
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = False
    opts.print_summary = False
    pycolmap.bundle_adjustment(rec, opts)
    return rec


def test_focal_sensitivity_tells_a_fixed_focal_length_from_a_guess(tmp_path, caplog):
    """A camera that slides sideways without turning leaves the focal length free (the error
    barely moves when it is held 20 % off); one that also turns by 40 deg fixes it."""
    cfg = SfmConfig()
    sliding = sfm.focal_sensitivity(_text_model(tmp_path / "slide", 0.0), cfg)
    turning = sfm.focal_sensitivity(_text_model(tmp_path / "turn", 40.0), cfg)
    assert abs(sliding) < 0.2 * sfm.FOCAL_MIN_SENSITIVITY, sliding
    assert turning > 2 * sfm.FOCAL_MIN_SENSITIVITY, turning
    with caplog.at_level(logging.WARNING, logger="nsff_core.priors.sfm"):
        sfm._warn_focal_sensitivity({"sensitivity": sliding}, 61.0, cfg, "clip")
        sfm._warn_focal_sensitivity({"sensitivity": turning}, 61.0, cfg, "clip")
        given = SfmConfig(focal_prior_fov=60.0)
        sfm._warn_focal_sensitivity({"sensitivity": sliding}, 61.0, given, "clip")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "scene clip" in warned[0] and "focal_prior_fov" in warned[0]


def test_the_diagnose_threshold_is_the_sfm_one():
    from nsff_core.config import DiagnosticsConfig

    assert DiagnosticsConfig().min_focal_sensitivity == sfm.FOCAL_MIN_SENSITIVITY


def test_focal_scan_finds_the_minimum_a_free_focal_length_missed(tmp_path):
    """A model bundle-adjusted at a focal length 40 % too short (as free bundle adjustment left
    davis_bear, there 80 % short) is searched over the ladder of fields of view: the rung nearest
    the true 300 px has the lowest error, and the free adjustment from there lands on it. Rungs
    far too short diverge and count as infinite. A camera that slides without turning has no
    such minimum: the estimate is kept."""
    cfg = SfmConfig()
    turning = _text_model(tmp_path / "turn", 40.0)
    assert sfm._adjusted_at_focal(turning, cfg, focal_px=100.0)[1] == math.inf  # diverges
    stuck, err = sfm._adjusted_at_focal(turning, cfg, focal_px=180.0)
    assert math.isfinite(err) and sfm._camera(stuck).mean_focal_length() == pytest.approx(180.0)
    found, record = sfm.scan_focal(stuck, cfg)
    assert record["taken"] and record["gain"] >= sfm.FOCAL_SCAN_MIN_GAIN
    assert len(record["focal_px"]) == len(record["error"]) == 13
    assert abs(record["best_px"] / 300.0 - 1) < 0.15
    assert record["refined"] and abs(sfm._camera(found).mean_focal_length() / 300.0 - 1) < 0.02
    assert found.compute_mean_reprojection_error() < (1 - sfm.FOCAL_SCAN_MIN_GAIN) * err

    kept, record = sfm.scan_focal(_text_model(tmp_path / "slide", 0.0), cfg)
    assert kept is None and not record["taken"] and record["gain"] < sfm.FOCAL_SCAN_MIN_GAIN


def test_focal_scan_keeps_the_held_rung_when_the_free_adjustment_diverges(tmp_path, monkeypatch):
    cfg = SfmConfig()
    stuck, _ = sfm._adjusted_at_focal(_text_model(tmp_path / "turn", 40.0), cfg, focal_px=180.0)

    def diverges(rec, cfg):
        rec = sfm._adjusted_at_focal(rec, cfg, focal_px=20.0)[0]  # a thrown-away model
        return rec, 0.0

    monkeypatch.setattr(sfm, "_refine_focal", diverges)
    found, record = sfm.scan_focal(stuck, cfg)
    assert record["taken"] and not record["refined"]
    assert sfm._camera(found).mean_focal_length() == pytest.approx(record["best_px"])
    assert found.compute_mean_reprojection_error() < sfm.DIVERGED_ERROR_PX
