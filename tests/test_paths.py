"""Render-split camera paths (nsff_core.model.paths; the splits of nsff_pl and ours)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from nsff_core.config import MAX_FRAME_SIDE
from nsff_core.model.cameras import camera_centres, interpolate_poses, path_length
from nsff_core.model.paths import (
    BULLET_POSES,
    MAX_INTERP,
    SPLIT_PATTERN,
    WANDER_POSES,
    CameraPath,
    SplitSpec,
    make_path,
    parse_split,
    spiral_radius,
    split_name,
)
from nsff_core.model.synthetic import camera_pose, intrinsics

from .conftest import REPO

N = 10
HW = (36, 64)


@pytest.fixture(scope="module")
def traj():
    c2w = np.stack([camera_pose(s) for s in np.linspace(0.0, 1.0, N)])
    K = intrinsics(HW[1], HW[0])
    return c2w, K


def _assert_rotations(c2w: np.ndarray) -> None:
    R = c2w[:, :3, :3]
    np.testing.assert_allclose(
        np.swapaxes(R, 1, 2) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "name, spec",
    [
        ("test", SplitSpec("test")),
        ("test_spiral", SplitSpec("spiral")),
        ("test_spiral3", SplitSpec("spiral_at", view=3)),
        ("test_fixview2_interp4", SplitSpec("fixview_interp", view=2, interp=4)),
        ("test_fixview0_interp0", SplitSpec("fixview_interp", view=0, interp=0)),
        ("path_orbit_2-b", SplitSpec("path", path_name="orbit_2-b")),
        ("test_spiral_time", SplitSpec("spiral_time")),
        ("bullet7", SplitSpec("bullet", time_text="7")),
        ("bullet0.25", SplitSpec("bullet", time_text="0.25")),
    ],
)
def test_parse_round_trip(name, spec):
    assert parse_split(name) == spec
    assert split_name(spec) == name


@pytest.mark.parametrize(
    "bad",
    [
        "test_fixview3",
        "spiral",
        "",
        "test_spiral-1",
        "test_fixview1_interp",
        "path_",
        "test_",
        "Test",
        "path_a/b",
        "test_spiralx",
        "test_spiral07",
        "test_fixview1_interp01",
        "bullet",
        "bullet07",
        "bullet7.50",
        "bullet7.",
        "bullet-1",
        "test_spiral_times",
    ],
)
def test_parse_errors(bad):
    with pytest.raises(ValueError, match="valid forms"):
        parse_split(bad)


@pytest.mark.parametrize(
    "name",
    [
        *("test", "test_spiral", "test_spiral_time", "test_spiral0", "test_spiral12"),
        *("test_fixview0_interp0", "test_fixview3_interp10", "bullet0", "bullet7.25"),
        *("path_a", "path_orbit_2-b", "path_A9"),
        *("test_spiral01", "test_spiral_", "test_fixview03_interp1", "test_fixview1_interp"),
        *("bullet", "bullet7.", "bullet7.50", "bullet07", "bullet-1", "path_", "path__a"),
        *("path_-a", "path_a/b", "path_a.b", "Test", "test ", "spiral", "", "test_spiral3x"),
        *("test_spiral_times", "atest", "test/test", "test_depth"),
    ],
)
def test_split_pattern_accepts_exactly_the_names_parse_split_accepts(name):
    """SPLIT_PATTERN (the wildcard constraint of {split} and the schema's pattern of
    render.splits) is the grammar of parse_split: the same names pass both."""
    try:
        parse_split(name)
        parsed = True
    except ValueError:
        parsed = False
    assert (re.fullmatch(SPLIT_PATTERN, name) is not None) == parsed
    # in a larger regex (Snakemake wraps a constraint as (?P<split>...)) it stays one group
    assert (
        re.fullmatch(rf"render/(?P<split>{SPLIT_PATTERN})\.mp4", f"render/{name}.mp4") or not parsed
    )
    assert re.compile(SPLIT_PATTERN).groups == 0


def test_the_rules_constrain_split_with_the_pattern():
    """No rule keeps a split regex of its own: the one wildcard constraint is SPLIT_PATTERN."""
    rules = REPO / "rules"
    constraints = [
        (f.name, line.strip())
        for f in sorted(rules.glob("*.smk"))
        for line in f.read_text().splitlines()
        if re.match(r"\s*split\s*=", line)
    ]
    assert constraints == [("common.smk", "split=SPLIT_PATTERN,")]


def test_interp_is_bounded():
    assert parse_split(f"test_fixview1_interp{MAX_INTERP}").interp == MAX_INTERP
    with pytest.raises(ValueError, match=f"interp must be 0 to {MAX_INTERP}"):
        parse_split(f"test_fixview1_interp{MAX_INTERP + 1}")


def test_spec_validation():
    with pytest.raises(ValueError):
        SplitSpec("spiral_at")
    with pytest.raises(ValueError):
        SplitSpec("orbit")
    with pytest.raises(ValueError):
        SplitSpec("test", view=1)


def test_view_out_of_range(traj):
    c2w, K = traj
    for name in ("test_fixview99_interp2", "test_spiral10"):
        with pytest.raises(ValueError, match="out of range"):
            make_path(parse_split(name), c2w, K, HW)


# --------------------------------------------------------------------------- splits


def test_test_split(traj):
    c2w, K = traj
    p = make_path(parse_split("test"), c2w, K, HW)
    np.testing.assert_array_equal(p.c2w, c2w)
    np.testing.assert_array_equal(p.times, np.arange(N))
    assert p.name == "test" and p.hw == HW
    np.testing.assert_array_equal(p.K, K)


@pytest.mark.parametrize("interp", [0, 1, 4])
def test_fixview_interp(traj, interp):
    c2w, K = traj
    p = make_path(parse_split(f"test_fixview3_interp{interp}"), c2w, K, HW)
    expect = N if interp == 0 else (N - 1) * interp + 1
    assert len(p) == expect
    assert p.times[0] == 0 and p.times[-1] == N - 1
    step = 1.0 if interp == 0 else 1.0 / interp
    np.testing.assert_allclose(np.diff(p.times), step)
    np.testing.assert_array_equal(p.c2w, np.broadcast_to(c2w[3], p.c2w.shape))


def test_spiral_at(traj):
    c2w, K = traj
    x = 4
    p = make_path(parse_split(f"test_spiral{x}"), c2w, K, HW)
    assert len(p) == WANDER_POSES
    np.testing.assert_array_equal(p.times, x)
    np.testing.assert_allclose(
        p.c2w[:, :3, :3], np.broadcast_to(c2w[x, :3, :3], (WANDER_POSES, 3, 3))
    )
    m = np.linalg.norm(c2w[0, :3, 3] - c2w[-1, :3, 3]) / 5
    d = np.linalg.norm(p.c2w[:, :3, 3] - c2w[x, :3, 3], axis=1)
    assert d.max() <= m * np.sqrt(1 + 1.25) + 1e-9 and d.max() > 0.5 * m
    # OpenCV-local offsets: phi = 0 -> (0, m/2, m): down and forward (= OpenGL (0, -m/2, -m)
    # negated by inverse(translate)); phi = pi/2 -> -m along the camera's x.
    local = (p.c2w[:, :3, 3] - c2w[x, :3, 3]) @ c2w[x, :3, :3]
    np.testing.assert_allclose(local[0], [0.0, m / 2, m], atol=1e-9)
    np.testing.assert_allclose(local[WANDER_POSES // 4], [-m, 0.0, 0.0], atol=1e-9)


def test_spiral(traj):
    c2w, K = traj
    p = make_path(parse_split("test_spiral"), c2w, K, HW)
    assert len(p) == 6 * N
    assert p.times[0] == 0 and p.times[-1] == N - 1
    assert np.all(np.diff(p.times) >= 0) and np.all(p.times == np.round(p.times))
    _assert_rotations(p.c2w)
    r = spiral_radius(c2w)
    assert r > 0
    # centres = trajectory + circle of radius r: distance to the lerped trajectory is exactly r
    base = interpolate_poses(np.arange(N, dtype=float), c2w, np.linspace(0, N - 1, 6 * N))
    off = p.c2w[:, :3, 3] - base[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(off, axis=1), r, rtol=1e-9)
    # and the circle lies in the average camera's x/y plane (no motion along the view axis)
    z_avg = c2w[:, :3, 2].sum(0)
    z_avg /= np.linalg.norm(z_avg)
    np.testing.assert_allclose(off @ z_avg, 0.0, atol=1e-9)
    # centres stay near the training trajectory
    cen = camera_centres(c2w)
    d = np.linalg.norm(p.c2w[:, None, :3, 3] - cen[None], axis=-1).min(1)
    assert d.max() <= r + path_length(cen) / (N - 1) + 1e-9


def test_spiral_time_moves_time_with_the_camera(traj):
    c2w, K = traj
    p = make_path(parse_split("test_spiral_time"), c2w, K, HW)
    spiral = make_path(parse_split("test_spiral"), c2w, K, HW)
    np.testing.assert_array_equal(p.c2w, spiral.c2w)
    np.testing.assert_allclose(p.times, np.linspace(0, N - 1, 6 * N))
    assert np.mean(p.times != np.round(p.times)) > 0.5  # mostly interpolated


def test_bullet_time_sweeps_the_training_span_at_a_fixed_time(traj):
    c2w, K = traj
    p = make_path(parse_split("bullet4.5"), c2w, K, HW)
    assert len(p) == BULLET_POSES and np.all(p.times == 4.5)
    _assert_rotations(p.c2w)
    # first camera, last camera half-way, and back towards the first
    np.testing.assert_allclose(p.c2w[0], c2w[0], atol=1e-9)
    np.testing.assert_allclose(p.c2w[BULLET_POSES // 2], c2w[-1], atol=1e-9)
    cen = camera_centres(p.c2w)
    first = camera_centres(c2w)[0]
    dist = np.linalg.norm(cen - first, axis=1)
    assert np.argmax(dist) == BULLET_POSES // 2
    assert dist[-1] < dist[BULLET_POSES // 2] / 10
    # eased: the steps are smallest at the turning points
    steps = np.linalg.norm(np.diff(cen, axis=0), axis=1)
    assert (
        steps[0] < steps[BULLET_POSES // 4] and steps[BULLET_POSES // 2] < steps[BULLET_POSES // 4]
    )
    with pytest.raises(ValueError, match="after the last frame"):
        make_path(parse_split(f"bullet{N - 1}.5"), c2w, K, HW)
    assert make_path(parse_split(f"bullet{N - 1}"), c2w, K, HW).times[0] == N - 1


def test_spiral_static_camera(traj):
    c2w, K = traj
    still = np.repeat(c2w[:1], N, axis=0)
    p = make_path(parse_split("test_spiral"), still, K, HW)
    np.testing.assert_allclose(p.c2w[:, :3, 3], np.broadcast_to(still[0, :3, 3], (6 * N, 3)))


# --------------------------------------------------------------------------- camera-path files


def test_camera_path_round_trip(tmp_path, traj):
    c2w, K = traj
    times = np.linspace(0, N - 1, 7)
    path = CameraPath(c2w=c2w[:7], K=K, hw=HW, times=times, name="orbit")
    f = tmp_path / "paths" / "orbit.npz"
    path.save(f)
    loaded = CameraPath.load(f, n_frames=N)
    np.testing.assert_array_equal(loaded.c2w, path.c2w)
    np.testing.assert_array_equal(loaded.K, K)
    np.testing.assert_array_equal(loaded.times, times)
    assert loaded.hw == HW and loaded.name == "orbit"
    via_split = make_path(parse_split("path_orbit"), c2w, K, HW, paths_dir=tmp_path / "paths")
    assert via_split.name == "path_orbit"
    np.testing.assert_array_equal(via_split.c2w, path.c2w)
    with pytest.raises(ValueError, match="paths_dir"):
        make_path(parse_split("path_orbit"), c2w, K, HW)
    with pytest.raises(FileNotFoundError):
        make_path(parse_split("path_nope"), c2w, K, HW, paths_dir=tmp_path / "paths")


def _write(f, **arrays):
    with open(f, "wb") as fh:
        np.savez(fh, **arrays)


def test_camera_path_validation(tmp_path, traj):
    c2w, K = traj
    good = dict(c2w=c2w, K=K, hw=np.array(HW), times=np.arange(N, dtype=float))
    f = tmp_path / "p.npz"

    _write(f, **{**good, "c2w": c2w[:, :3]})
    with pytest.raises(ValueError, match=r"p\.npz.*'c2w'.*shape"):
        CameraPath.load(f)

    skew = c2w.copy()
    skew[2, :3, :3] *= 1.1
    _write(f, **{**good, "c2w": skew})
    with pytest.raises(ValueError, match=r"'c2w'.*pose 2 is not orthonormal"):
        CameraPath.load(f)

    _write(f, **{**good, "times": np.arange(N - 1, dtype=float)})
    with pytest.raises(ValueError, match="'times'.*shape"):
        CameraPath.load(f)

    _write(f, **{**good, "times": np.arange(N, dtype=float) + 0.5})
    CameraPath.load(f)  # no frame count given: any finite times
    with pytest.raises(ValueError, match=r"'times'.*\[0, 9\]"):
        CameraPath.load(f, n_frames=N)

    _write(f, **{k: v for k, v in good.items() if k != "K"})
    with pytest.raises(ValueError, match="'K'.*missing"):
        CameraPath.load(f)

    bad_k = {**good, "K": K.copy()}
    bad_k["K"][0, 0] = np.nan
    _write(f, **bad_k)
    with pytest.raises(ValueError, match="'K'.*non-finite"):
        CameraPath.load(f)

    with pytest.raises(ValueError, match="'hw'"):
        CameraPath(c2w=c2w, K=K, hw=(0, 5), times=np.arange(N), name="x")


@pytest.mark.parametrize("hw", [(100000, 100000), (36, 8193)])
def test_camera_path_size_is_bounded_before_rendering(tmp_path, traj, hw):
    """A path file asking for a view larger than 8192 px on a side is refused when read: a
    100000x100000 view would need tens of GB per frame."""
    c2w, K = traj
    f = tmp_path / "big.npz"
    _write(f, c2w=c2w, K=K, hw=np.array(hw), times=np.arange(N, dtype=float))
    with pytest.raises(ValueError, match=rf"big\.npz: key 'hw': render size {hw[0]}x{hw[1]}"):
        CameraPath.load(f, n_frames=N)
    _write(f, c2w=c2w, K=K, hw=np.array((36, MAX_FRAME_SIDE)), times=np.arange(N, dtype=float))
    assert CameraPath.load(f).hw == (36, MAX_FRAME_SIDE)


def test_render_reports_a_huge_camera_path_as_a_stage_error(tmp_path, traj):
    """The render rule's function turns the refusal into a StageError naming the scene, before
    it loads the model (the checkpoint here does not even exist)."""
    from nsff_core.errors import StageError
    from nsff_core.model.io import write_cameras
    from nsff_core.workflow.stages.render_split import render_split

    c2w, K = traj
    cams = tmp_path / "cameras.npz"
    names = [f"{i:05d}.png" for i in range(N)]
    write_cameras(cams, c2w, K, HW, np.full(N, 0.5), np.full(N, 5.0), names)
    (tmp_path / "paths").mkdir()
    big = dict(c2w=c2w, K=K, hw=np.array((100000, 100000)), times=np.arange(N, dtype=float))
    _write(tmp_path / "paths" / "big.npz", **big)
    with pytest.raises(StageError, match=r"scene 's', rule 'render'.*'hw': render size 100000"):
        render_split(
            tmp_path / "missing.ckpt",
            cams,
            "path_big",
            tmp_path / "render",
            tmp_path / "paths",
            scene="s",
        )
