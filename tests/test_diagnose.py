"""Rule diagnose (nsff_core.workflow.stages.diagnose): each check passing and failing on fabricated inputs,
strict mode, the images, and the rule's place in the workflow (after the priors, before train).

The scene is the tiny synthetic one preprocessed by every prior stage (conftest
``tiny_scene_dir``); each failing case copies it and breaks one input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from nsff_core.config import DiagnosticsConfig
from nsff_core.errors import StageError
from nsff_core.model import io
from nsff_core.workflow.stages.diagnose import (
    CHECK_NAMES,
    IMAGE_NAMES,
    JSON_NAME,
    TILE_GAP,
    TILE_MAX,
    contact_sheet,
    contact_sheet_indices,
    depth_correlations,
    diagnose_scene,
    horizontal_fov_deg,
    mover_motion,
)

from .conftest import REPO

# --------------------------------------------------------------------------- helpers


def run(scene_dir: Path, out: Path, masks_backend: str | None = None, **cfg) -> dict:
    """diagnose_scene on a folder laid out as results/<scene>/."""
    d = scene_dir
    return diagnose_scene(
        d / "frames",
        d / "flow_fw",
        d / "flow_ok",
        d / "masks",
        d / "disp",
        d / "cameras.npz",
        d / "sfm",
        out,
        DiagnosticsConfig(**cfg),
        scene="tiny",
        masks_backend=masks_backend,
    )


@pytest.fixture()
def scene(tiny_scene_dir, tmp_path) -> Path:
    """A private copy of the preprocessed tiny scene, to break."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_scene_dir, dst)
    return dst


def _rewrite_cameras(scene: Path, **changes) -> None:
    cams = io.read_cameras(scene / "cameras.npz")
    cams.update(changes)
    io.write_cameras(
        scene / "cameras.npz",
        cams["c2w"],
        cams["K"],
        tuple(cams["hw"]),
        cams["near"],
        cams["far"],
        [str(n) for n in cams["names"]],
        cams["registered"],
    )


def _fx_for_fov(width: int, fov_deg: float) -> float:
    return 0.5 * width / np.tan(np.radians(fov_deg) / 2)


def narrow_fov(scene: Path) -> None:
    cams = io.read_cameras(scene / "cameras.npz")
    K = cams["K"].copy()
    K[0, 0] = K[1, 1] = _fx_for_fov(int(cams["hw"][1]), 20.0)
    _rewrite_cameras(scene, K=K)


def wide_fov(scene: Path) -> None:
    cams = io.read_cameras(scene / "cameras.npz")
    K = cams["K"].copy()
    K[0, 0] = K[1, 1] = _fx_for_fov(int(cams["hw"][1]), 130.0)
    _rewrite_cameras(scene, K=K)


def focal_unfixed(scene: Path) -> None:
    """The sfm rule measured a flat reprojection error over the focal length."""
    path = scene / "sfm" / "summary.json"
    summary = json.loads(path.read_text())
    summary["focal"]["sensitivity"] = 0.002
    path.write_text(json.dumps(summary))


def unregister_two(scene: Path) -> None:
    reg = io.read_cameras(scene / "cameras.npz")["registered"].copy()
    reg[[3, 7]] = False
    _rewrite_cameras(scene, registered=reg)


def _fill_masks(scene: Path, value: bool) -> None:
    for p in io.list_frames(scene / "masks"):
        io.write_mask(p, np.full(io.read_mask(p).shape, value))


def masks_everywhere(scene: Path) -> None:
    _fill_masks(scene, True)


def masks_nowhere(scene: Path) -> None:
    _fill_masks(scene, False)


def flow_inconsistent(scene: Path) -> None:
    for p in (scene / "flow_ok").glob("*.png"):
        m = io.read_mask(p, made_by="flow")
        m[:, : m.shape[1] * 2 // 3] = False  # a third of each frame consistent
        io.write_mask(p, m)


def movers_fast(scene: Path) -> None:
    """The movers jump a fifth of the frame width between frames; the rest is left as it was."""
    for i, p in enumerate(sorted((scene / "flow_fw").glob("*.flo"))):
        flow = io.read_flo(p)
        mask = io.read_mask(scene / "masks" / io.frame_name(i, ".png"))
        flow[mask, 0] += 0.2 * flow.shape[1]
        io.write_flo(p, flow)


def depth_reversed(scene: Path) -> None:
    """Near and far swapped: the maps rank the points backwards."""
    for p in (scene / "disp").glob("*.npy"):
        io.write_disparity(p, 1.0 / io.read_disparity(p))


# --------------------------------------------------------------------------- the checks


@pytest.mark.stage
def test_every_check_passes_on_the_tiny_scene(tiny_scene_dir, tmp_path):
    out = tmp_path / "diagnostics"
    result = run(tiny_scene_dir, out)
    saved = json.loads((out / JSON_NAME).read_text())
    assert saved["failed"] == [] == result["failed"]
    assert set(saved["checks"]) == set(CHECK_NAMES)
    for name, check in saved["checks"].items():
        assert check["passed"] is True, (name, check)
        assert isinstance(check["value"], float) and check["threshold"], (name, check)
    assert saved["checks"]["focal"]["message"].endswith("the clip fixes the focal length")
    cams = io.read_cameras(tiny_scene_dir / "cameras.npz")
    fov = saved["checks"]["fov"]
    assert fov["value"] == pytest.approx(horizontal_fov_deg(cams["K"], int(cams["hw"][1])))
    assert fov["threshold"] == {"min": 30.0, "max": 110.0}
    n = len(cams["names"])
    assert len(saved["per_frame"]["mask_coverage"]) == n
    assert saved["per_frame"]["flow_ok_fw"][-1] is None  # the last frame has no forward flow
    assert saved["per_frame"]["flow_ok_bw"][0] is None


@pytest.mark.stage
@pytest.mark.parametrize(
    "breaker, check, option",
    [
        (narrow_fov, "fov", "sfm.focal_prior_fov"),
        (wide_fov, "fov", "sfm.focal_prior_fov"),
        (focal_unfixed, "focal", "sfm.focal_prior_fov"),
        (unregister_two, "registered", "frames stride"),
        (masks_everywhere, "masks_large", "masks.backend"),
        (masks_nowhere, "masks_small", "masks.backend"),
        (flow_inconsistent, "flow_consistency", "flow.backend"),
        (movers_fast, "mover_motion", "frames stride"),
        (depth_reversed, "depth_sfm", "depth.backend"),
    ],
    ids=lambda v: getattr(v, "__name__", v) if callable(v) else None,
)
def test_a_broken_prior_fails_its_check_only(scene, tmp_path, caplog, breaker, check, option):
    """The broken input fails its own check (a warning in the log naming what to try) and no
    other; without strict the run completes with the check listed as failed."""
    breaker(scene)
    out = tmp_path / "diagnostics"
    with caplog.at_level("WARNING", logger="nsff_core.workflow.stages.diagnose"):
        result = run(scene, out)
    assert result["failed"] == [check]
    saved = json.loads((out / JSON_NAME).read_text())
    assert saved["failed"] == [check] and saved["checks"][check]["passed"] is False
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"check {check} failed" in m and option in m for m in warned), warned


@pytest.mark.stage
def test_check_values_of_the_broken_inputs(scene, tmp_path):
    """The measured values behind the failures: the field of view of the given focal length,
    the share of registered frames, and the names of the unregistered ones."""
    narrow_fov(scene)
    unregister_two(scene)
    flow_inconsistent(scene)
    focal_unfixed(scene)
    saved = run(scene, tmp_path / "d")["checks"]
    assert saved["focal"]["message"].endswith("does not fix the focal length")
    assert saved["fov"]["value"] == pytest.approx(20.0)
    n = len(io.list_frames(scene / "frames"))
    assert saved["registered"]["value"] == pytest.approx((n - 2) / n)
    assert saved["registered"]["unregistered"] == ["00003.png", "00007.png"]
    assert saved["flow_consistency"]["value"] < 0.34


@pytest.mark.stage
def test_the_focal_check_is_skipped_when_the_lens_was_given(scene, tmp_path):
    """With sfm.focal_prior_fov the focal length is the user's, not the clip's: no check; an
    SfM output from before the measurement: no check either."""
    path = scene / "sfm" / "summary.json"
    summary = json.loads(path.read_text())
    summary["focal"].update(sensitivity=0.002, prior_fov_deg=60.0)
    path.write_text(json.dumps(summary))
    result = run(scene, tmp_path / "a")
    assert result["failed"] == [] and result["checks"]["focal"]["passed"] is None
    del summary["focal"]["sensitivity"]
    summary["focal"]["prior_fov_deg"] = None
    path.write_text(json.dumps(summary))
    result = run(scene, tmp_path / "b")
    assert result["failed"] == [] and result["checks"]["focal"]["passed"] is None


@pytest.mark.stage
def test_no_masks_backend_skips_the_mask_checks(scene, tmp_path):
    masks_nowhere(scene)
    result = run(scene, tmp_path / "d", masks_backend="none")
    assert result["failed"] == []
    assert result["checks"]["masks_small"]["passed"] is None


@pytest.mark.stage
def test_thresholds_come_from_the_config(tiny_scene_dir, tmp_path):
    """A bound that the scene misses fails the check (here: a field of view the synthetic
    camera is outside of, and a mask coverage above the scene's)."""
    fov = run(tiny_scene_dir, tmp_path / "a")["checks"]["fov"]["value"]
    result = run(tiny_scene_dir, tmp_path / "b", min_fov=fov + 1, max_fov=fov + 10)
    assert result["failed"] == ["fov"]
    assert result["checks"]["fov"]["threshold"] == {"min": fov + 1, "max": fov + 10}
    result = run(tiny_scene_dir, tmp_path / "c", min_mask_coverage=0.99)
    assert result["failed"] == ["masks_small"]


# --------------------------------------------------------------------------- strict


@pytest.mark.stage
@pytest.mark.parametrize(
    "breaker, check, option",
    [(narrow_fov, "fov", "sfm.focal_prior_fov"), (masks_everywhere, "masks_large", "masks")],
    ids=["fov", "masks"],
)
def test_strict_stops_with_scene_check_value_and_advice(scene, tmp_path, breaker, check, option):
    """strict: a StageError naming the scene, the rule, the check, the measured value and what
    to try; no diagnostics.json (an old one is removed), the images are there to look at."""
    out = tmp_path / "diagnostics"
    out.mkdir()
    (out / JSON_NAME).write_text('{"failed": []}')  # from an earlier run
    breaker(scene)
    with pytest.raises(StageError) as err:
        run(scene, out, strict=True)
    msg = str(err.value)
    assert "scene 'tiny', rule 'diagnose'" in msg and f"{check}:" in msg and option in msg
    if check == "fov":
        assert "20.0 deg" in msg
    else:
        n = len(io.list_frames(scene / "frames"))
        assert f"on {n} of {n} frames" in msg
    assert not (out / JSON_NAME).exists()
    assert all((out / name).stat().st_size > 0 for name in IMAGE_NAMES.values())


@pytest.mark.stage
def test_strict_passes_a_good_scene(tiny_scene_dir, tmp_path):
    assert run(tiny_scene_dir, tmp_path / "d", strict=True)["failed"] == []
    assert (tmp_path / "d" / JSON_NAME).is_file()


def test_an_inverted_fov_range_is_refused(tmp_path):
    with pytest.raises(StageError, match="diagnostics.min_fov"):
        run(tmp_path, tmp_path / "d", min_fov=120.0, max_fov=60.0)


# --------------------------------------------------------------------------- images


def _png_shape(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return io.read_image(path).shape


@pytest.mark.stage
def test_images_are_pngs_of_the_expected_size(tiny_scene_dir, tmp_path):
    out = tmp_path / "diagnostics"
    result = run(tiny_scene_dir, out, contact_sheet_frames=4)
    n = len(io.list_frames(tiny_scene_dir / "frames"))
    h, w = io.read_cameras(tiny_scene_dir / "cameras.npz")["hw"]
    rows = len(result["contact_sheet_frames"])
    assert rows == 4 and result["contact_sheet_frames"][0] == "00000.png"
    assert result["contact_sheet_frames"][-1] == io.frame_name(n - 2)  # has a forward flow
    assert _png_shape(out / "contact_sheet.png") == (
        rows * h + (rows - 1) * TILE_GAP,
        3 * w + 2 * TILE_GAP,
        3,
    )
    # matplotlib figures: inches x 100 dpi
    assert _png_shape(out / "per_frame.png") == (550, 800, 3)
    assert _png_shape(out / "camera_path.png") == (550, 1500, 3)
    assert _png_shape(out / "depth_vs_sfm.png") == (450, 1100, 3)
    sheet = io.read_image(out / "contact_sheet.png")
    assert sheet[:h, :w].std() > 10 and sheet[:h, w + TILE_GAP :].std() > 10  # not blank


def test_contact_sheet_shrinks_large_frames_and_shows_each_layer():
    """Tiles of a 960x540 frame are 480x270; the mask tints the frame red, still flow is white,
    the disparity ramp spans dark to bright."""
    h, w = 540, 960
    frame = np.full((h, w, 3), 128, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[100:300, 200:500] = True
    flow = np.zeros((h, w, 2), np.float32)
    flow[:, w // 2 :, 0] = 5.0
    disp = np.tile(np.linspace(0.1, 1.0, w, dtype=np.float32), (h, 1))
    sheet = contact_sheet([frame] * 2, [mask] * 2, [flow] * 2, [disp] * 2, ["a.png", "b.png"])
    th, tw = h * TILE_MAX // w, TILE_MAX
    assert sheet.shape == (2 * th + TILE_GAP, 3 * tw + 2 * TILE_GAP, 3)
    r, g, _ = sheet[th // 2 - 30, tw // 2 - 30].astype(int)  # inside the mask, scaled by 1/2
    assert r > g + 40
    flow_tile = sheet[:th, tw + TILE_GAP : 2 * tw + TILE_GAP]
    assert (flow_tile[th // 2, tw // 4] > 240).all()  # no motion: white
    assert flow_tile[th // 2, 3 * tw // 4].min() < 100  # moving right: saturated colour
    disp_tile = sheet[:th, 2 * (tw + TILE_GAP) :].astype(int).sum(axis=2)
    assert disp_tile[th // 2, 10] < 100 < 500 < disp_tile[th // 2, tw - 10]


def test_contact_sheet_indices():
    assert contact_sheet_indices(12, 4) == [0, 3, 7, 10]
    assert contact_sheet_indices(3, 6) == [0, 1]  # only frames with a forward flow
    assert contact_sheet_indices(24, 1) == [0]


# --------------------------------------------------------------------------- measurements


def test_mover_motion_is_the_movers_own_flow():
    flow = np.zeros((40, 50, 2), np.float32)
    flow[..., 0] = 2.0  # the camera's share
    mask = np.zeros((40, 50), bool)
    mask[10:20, 10:30] = True
    flow[mask, 0] = 10.0
    assert mover_motion(flow, mask) == pytest.approx(8.0)
    flow[mask, 1] = np.linspace(0.0, 6.0, mask.sum())  # a spread: the 95th percentile of it
    expected = np.percentile(np.hypot(8.0, np.linspace(0.0, 6.0, mask.sum())), 95)
    assert mover_motion(flow, mask) == pytest.approx(expected)
    assert np.isnan(mover_motion(flow, np.zeros_like(mask)))  # no mover
    assert np.isnan(mover_motion(flow, np.ones_like(mask)))  # no background to compare with
    with pytest.raises(ValueError, match="differ in size"):
        mover_motion(flow, mask[:20])


def test_fov_of_a_pinhole():
    K = np.array([[160.0, 0, 159.5], [0, 160.0, 89.5], [0, 0, 1]])
    assert horizontal_fov_deg(K, 320) == pytest.approx(90.0)
    K[0, 0] = 320 / (2 * np.tan(np.radians(30)))
    assert horizontal_fov_deg(K, 320) == pytest.approx(60.0)


def test_depth_correlations_are_rank_based():
    rng = np.random.default_rng(0)
    d_map = rng.uniform(0.1, 1.0, (20, 30)).astype(np.float32)
    px = np.stack([rng.integers(0, 30, 50), rng.integers(0, 20, 50)], axis=1)
    truth = d_map[px[:, 1], px[:, 0]]
    points = [
        (px, np.exp(5 * truth)),  # monotone: same order
        (px, -truth),  # reversed
        (px[:5], truth[:5]),  # too few points
        (px, np.ones(50)),  # no order
    ]
    rho, counts = depth_correlations(iter([d_map] * 4), points)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert np.isnan(rho[2]) and rho[3] == 0.0
    assert counts.tolist() == [50, 50, 5, 50]


# --------------------------------------------------------------------------- the workflow


@pytest.mark.workflow
def test_dry_run_plans_diagnose_after_the_priors_and_before_train(tmp_path):
    from .test_workflow import make_workdir, snakemake

    wd = make_workdir(tmp_path, (REPO / "scenes.tsv").read_text())
    r = snakemake(wd, "-n", "--cores", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "rule diagnose:" in out
    assert out.index("rule depth:") < out.index("rule diagnose:") < out.index("rule train:")
    dag = snakemake(wd, "--dag", "--cores", "2")
    assert dag.returncode == 0, dag.stderr
    label = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)", dag.stdout, re.MULTILINE))
    edges = {(label[a], label[b]) for a, b in re.findall(r"(\d+) -> (\d+)", dag.stdout)}
    assert ("diagnose", "train") in edges
    assert {("depth", "diagnose"), ("masks", "diagnose"), ("sfm", "diagnose")} <= edges
    assert ("flow", "diagnose") in edges
