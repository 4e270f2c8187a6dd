"""Synthetic scene: determinism, shapes, and ground truth that is consistent with itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nsff_core.config import SyntheticConfig
from nsff_core.model.synthetic import SyntheticScene, load_ground_truth, render_scene, write_scene

TINY = SyntheticConfig(num_frames=4, width=96, height=54, seed=3)


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    cfg = SyntheticConfig(
        num_frames=8, width=160, height=90, novel_offsets=((0.0, -0.15, 0.0), (0.1, 0.0, 0.0))
    )
    return render_scene(cfg)


def _bilinear(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sample img (H, W, C) at continuous pixel coordinates xy (H, W, 2) (integer = centre);
    coordinates are clamped to the image."""
    h, w = img.shape[:2]
    x = np.clip(xy[..., 0], 0, w - 1)
    y = np.clip(xy[..., 1], 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(int), w - 2)
    y0 = np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = img.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _grid(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([x, y], axis=-1)


def _reproject(depth: np.ndarray, K: np.ndarray, c2w_a: np.ndarray, c2w_b: np.ndarray):
    """Naive static reprojection of every pixel of camera a (z-depth) into camera b: (H, W, 2)."""
    h, w = depth.shape
    p = _grid(h, w)
    rays = np.stack([p[..., 0], p[..., 1], np.ones((h, w))], axis=-1) @ np.linalg.inv(K).T
    world = (rays * depth[..., None]) @ c2w_a[:3, :3].T + c2w_a[:3, 3]
    w2c = np.linalg.inv(c2w_b)
    cam = world @ w2c[:3, :3].T + w2c[:3, 3]
    proj = cam @ K.T
    return proj[..., :2] / proj[..., 2:]


def _visible_fw(scene: SyntheticScene, i: int, tol: float = 0.05) -> np.ndarray:
    """Pixels of frame i whose forward flow lands inside frame i+1 and comes back with the
    backward flow (GT forward-backward consistency): visible in both frames."""
    h, w = scene.hw
    p = _grid(h, w)
    q = p + scene.flow_fw[i]
    inside = (q[..., 0] >= 0) & (q[..., 0] <= w - 1) & (q[..., 1] >= 0) & (q[..., 1] <= h - 1)
    back = _bilinear(scene.flow_bw[i], q)
    return inside & (np.linalg.norm(scene.flow_fw[i] + back, axis=-1) < tol)


def test_deterministic_and_seeded():
    a, b = render_scene(TINY), render_scene(TINY)
    for f in dataclasses.fields(SyntheticScene):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert np.array_equal(x, y), f.name
    c = render_scene(dataclasses.replace(TINY, seed=4))
    assert not np.array_equal(a.images, c.images)
    assert np.array_equal(a.c2w, c.c2w)  # the camera path does not depend on the seed
    assert not np.allclose(a.object_poses, c.object_poses)  # the object's motion does


def test_shapes_and_dtypes(scene):
    n, h, w, v = 8, 90, 160, 2
    expected = {
        "images": ((n, h, w, 3), np.uint8),
        "K": ((3, 3), np.float64),
        "c2w": ((n, 4, 4), np.float64),
        "depth": ((n, h, w), np.float32),
        "dynamic_mask": ((n, h, w), np.bool_),
        "flow_fw": ((n - 1, h, w, 2), np.float32),
        "flow_bw": ((n - 1, h, w, 2), np.float32),
        "novel_images": ((n, v, h, w, 3), np.uint8),
        "novel_c2w": ((n, v, 4, 4), np.float64),
        "novel_offsets": ((v, 3), np.float64),
        "object_poses": ((n, 1, 4, 4), np.float64),
    }
    for name, (shape, dtype) in expected.items():
        arr = getattr(scene, name)
        assert arr.shape == shape and arr.dtype == dtype, name
    assert scene.hw == (h, w) and scene.num_frames == n and scene.fps == 10.0
    for name in ("depth", "flow_fw", "flow_bw"):
        assert np.isfinite(getattr(scene, name)).all(), name
    assert scene.depth.min() > 1.5 and scene.depth.max() < 12.0
    K = scene.K
    assert K[0, 0] == K[1, 1] and K[0, 2] == (w - 1) / 2 and K[1, 2] == (h - 1) / 2
    R = scene.c2w[:, :3, :3]
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)


def test_other_resolution_same_geometry():
    """The camera is defined by its FOV: depth at a coarser size matches the finer one."""
    fine = render_scene(SyntheticConfig(num_frames=2, width=192, height=108, novel_offsets=()))
    coarse = render_scene(SyntheticConfig(num_frames=2, width=96, height=54, novel_offsets=()))
    assert fine.novel_images.shape == (2, 0, 108, 192, 3)
    # pixel (x, y) of the coarse image covers fine pixels 2x..2x+1: its centre is at 2x + 0.5
    mean_fine = fine.depth.reshape(2, 54, 2, 96, 2).mean(axis=(2, 4))
    assert np.median(np.abs(mean_fine - coarse.depth)) < 0.01


def test_photometric_consistency_of_forward_flow(scene):
    """Sampling frame i+1 at p + flow_fw[i] reproduces frame i where the point stays visible
    (a quarter-pixel flow error roughly doubles the error checked here)."""
    dyn_err = []
    for i in range(scene.num_frames - 1):
        vis = _visible_fw(scene, i)
        assert vis.mean() > 0.8
        img0 = scene.images[i].astype(np.float64)
        warped = _bilinear(scene.images[i + 1], _grid(*scene.hw) + scene.flow_fw[i])
        err = np.abs(warped - img0).mean(axis=-1)
        err_zero = np.abs(scene.images[i + 1].astype(np.float64) - img0).mean(axis=-1)[vis].mean()
        assert err[vis].mean() < 3.0, (i, err[vis].mean())
        assert err[vis].mean() < 0.3 * err_zero, (i, err[vis].mean(), err_zero)
        dyn_err.append(err[vis & scene.dynamic_mask[i]].mean())
    assert np.mean(dyn_err) < 4.0, dyn_err


def test_backward_flow_photometric(scene):
    i = 3
    img1 = scene.images[i + 1].astype(np.float64)
    warped = _bilinear(scene.images[i], _grid(*scene.hw) + scene.flow_bw[i])
    fw_ok = _visible_fw(scene, i)
    # visibility of frame i+1 pixels: consistency of bw then fw
    q = _grid(*scene.hw) + scene.flow_bw[i]
    vis = np.linalg.norm(scene.flow_bw[i] + _bilinear(scene.flow_fw[i], q), axis=-1) < 0.05
    assert fw_ok.mean() > 0.8 and vis.mean() > 0.8
    assert np.abs(warped - img1).mean(axis=-1)[vis].mean() < 3.0


def test_static_flow_is_reprojection_of_depth(scene):
    for i in range(scene.num_frames - 1):
        static = ~scene.dynamic_mask[i]
        pred = _reproject(scene.depth[i], scene.K, scene.c2w[i], scene.c2w[i + 1])
        pred -= _grid(*scene.hw)
        assert np.abs(pred - scene.flow_fw[i])[static].max() < 1e-3
        static1 = ~scene.dynamic_mask[i + 1]
        pred = _reproject(scene.depth[i + 1], scene.K, scene.c2w[i + 1], scene.c2w[i])
        pred -= _grid(*scene.hw)
        assert np.abs(pred - scene.flow_bw[i])[static1].max() < 1e-3
    # the camera moves: static flow is not trivially zero
    assert np.abs(scene.flow_fw).mean() > 0.3


def _sampson(p1: np.ndarray, p2: np.ndarray, F: np.ndarray) -> np.ndarray:
    x1 = np.concatenate([p1, np.ones_like(p1[..., :1])], axis=-1)
    x2 = np.concatenate([p2, np.ones_like(p2[..., :1])], axis=-1)
    Fx1, Ftx2 = x1 @ F.T, x2 @ F
    num = np.einsum("...i,...i->...", x2, Fx1) ** 2
    return np.sqrt(
        num / (Fx1[..., 0] ** 2 + Fx1[..., 1] ** 2 + Ftx2[..., 0] ** 2 + Ftx2[..., 1] ** 2)
    )


def test_dynamic_object_breaks_epipolar_geometry(scene):
    h, w = scene.hw
    cover = scene.dynamic_mask.mean(axis=(1, 2))
    assert (cover > 0.03).all() and (cover < 0.08).all(), cover
    # the object stays fully inside the view: the mask never touches the border
    m = scene.dynamic_mask
    assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())
    Kinv = np.linalg.inv(scene.K)
    p = _grid(h, w)
    for i in range(scene.num_frames - 1):
        rel = np.linalg.inv(scene.c2w[i + 1]) @ scene.c2w[i]  # camera i -> camera i+1
        R, t = rel[:3, :3], rel[:3, 3]
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        F = Kinv.T @ tx @ R @ Kinv
        d = _sampson(p, p + scene.flow_fw[i], F)
        assert np.max(d[~m[i]]) < 1e-3
        assert np.median(d[m[i]]) > 1.0  # epipolar motion masks can see the object
        pred = _reproject(scene.depth[i], scene.K, scene.c2w[i], scene.c2w[i + 1]) - p
        res = np.linalg.norm(scene.flow_fw[i] - pred, axis=-1)
        assert np.median(res[m[i]]) > 1.0
        assert 1.0 < np.median(np.linalg.norm(scene.flow_fw[i], axis=-1)[m[i]]) < 12.0


def test_novel_cameras(scene):
    offsets = np.array([[0.0, -0.15, 0.0], [0.1, 0.0, 0.0]])
    assert np.array_equal(scene.novel_offsets, offsets)
    for t in range(scene.num_frames):
        for v, off in enumerate(offsets):
            nov, train = scene.novel_c2w[t, v], scene.c2w[t]
            assert np.allclose(nov[:3, :3], train[:3, :3])
            local = np.linalg.inv(train) @ np.append(nov[:3, 3], 1.0)
            assert np.allclose(local[:3], off, atol=1e-12)
    # the held-out image is rendered from that camera: static pixels reprojected into it match
    t, v = 2, 0
    q = _reproject(scene.depth[t], scene.K, scene.c2w[t], scene.novel_c2w[t, v])
    h, w = scene.hw
    ok = ~scene.dynamic_mask[t] & (q[..., 0] > 1) & (q[..., 0] < w - 2)
    ok &= (q[..., 1] > 1) & (q[..., 1] < h - 2)
    img = scene.images[t].astype(np.float64)
    warped = _bilinear(scene.novel_images[t, v], q)
    err = np.median(np.abs(warped - img).mean(axis=-1)[ok])
    err_same = np.median(np.abs(scene.novel_images[t, v].astype(np.float64) - img).mean(axis=-1))
    assert err < 3.0 and err < 0.3 * err_same, (err, err_same)


def test_write_and_load_round_trip(scene, tmp_path):
    import imageio_ffmpeg

    video, gt = tmp_path / "demo.mp4", tmp_path / "gt" / "demo_gt.npz"
    write_scene(scene, video, gt)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["demo.mp4", "demo_gt.npz", "gt"]
    back = load_ground_truth(gt)
    for f in dataclasses.fields(SyntheticScene):
        x, y = getattr(scene, f.name), getattr(back, f.name)
        assert np.array_equal(x, y), f.name
        assert np.asarray(x).dtype == np.asarray(y).dtype, f.name
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    assert tuple(meta["size"]) == (160, 90) and meta["fps"] == pytest.approx(10.0)
    frames = [np.frombuffer(f, np.uint8).reshape(90, 160, 3) for f in reader]
    assert len(frames) == scene.num_frames
    decoded = np.stack(frames).astype(np.float64)
    # yuv420p halves the chroma resolution (costly on these colourful textures); luma stays close
    assert np.abs(decoded - scene.images).mean() < 6.0
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(decoded @ luma - scene.images @ luma).mean() < 2.0


def test_write_scene_fails_cleanly(tmp_path):
    odd = render_scene(SyntheticConfig(num_frames=2, width=33, height=20, novel_offsets=()))
    with pytest.raises(ValueError, match="even"):
        write_scene(odd, tmp_path / "v.mp4", tmp_path / "gt.npz")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the demo is fixed

#: sha256 of the rendered frames, depth (float32 bytes) and masks of the config.yaml presets
#: ``demo`` and ``tiny``: the demo's documented numbers depend on these exact scenes. A change
#: of the renderer that moves them must be deliberate (update the README's demo numbers too).
DEMO_HASHES = {
    "demo": ("842fc5f5dae745f1", "80d122cf5fd2a2f1", "437221dd56bc3e71"),
    "tiny": ("288a13e69ffebf22", "7c81d1f759dab5e9", "b5d707129e78b6ac"),
}


def _hash(a: np.ndarray) -> str:
    import hashlib

    a = np.asarray(a)
    return hashlib.sha256(a.tobytes() + str(a.dtype).encode() + str(a.shape).encode()).hexdigest()[
        :16
    ]


def _presets() -> dict:
    import yaml

    from .conftest import REPO

    return yaml.safe_load((REPO / "config.yaml").read_text())["synthetic"]


def test_demo_and_tiny_scenes_unchanged(synthetic_scene):
    from nsff_core.config import stage_config

    presets = _presets()
    # the session fixture is the demo preset (SyntheticConfig's defaults)
    assert stage_config("synthetic", presets["demo"]) == SyntheticConfig()
    tiny = render_scene(stage_config("synthetic", presets["tiny"]))
    for name, scene in (("demo", synthetic_scene), ("tiny", tiny)):
        got = (_hash(scene.images), _hash(scene.depth), _hash(scene.dynamic_mask))
        assert got == DEMO_HASHES[name], name


# --------------------------------------------------------------------------- the suite


def test_suite_presets_in_config_yaml_cover_every_value():
    import yaml

    from nsff_core.config import stage_config
    from nsff_core.model.synthetic import (
        CAMERAS,
        DEGRADATIONS,
        MOVERS,
        SUITE_PRESETS,
        TEXTURES,
        suite_config,
    )
    from nsff_core.workflow import sheet

    from .conftest import REPO

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    sheet.validate_config(cfg, REPO / "rules" / "schemas" / "config.schema.yaml")
    presets = cfg["synthetic"]
    suite = {n: stage_config("synthetic", p) for n, p in presets.items() if n.startswith("suite")}
    assert set(suite) == set(SUITE_PRESETS) and len(suite) >= 6
    for name, cfg in suite.items():
        assert cfg == suite_config(name), name
        assert (cfg.width, cfg.height, cfg.layout) == (854, 480, "mixed"), name
    assert {c.texture for c in suite.values()} == set(TEXTURES)
    assert {c.camera for c in suite.values()} >= set(CAMERAS) - {"sweep"}
    assert {m for c in suite.values() for m in c.movers} >= set(MOVERS) - {"cube"}
    assert {d for c in suite.values() for d in c.degrade} == set(DEGRADATIONS)
    assert any(len(c.movers) >= 2 for c in suite.values())
    assert len({c.seed for c in suite.values()}) == len(suite)


#: sha256 of each suite preset's geometry, motions and camera path (rounded to 1e-9): the
#: suite is a benchmark, so tables from different commits compare only if these stay put
SUITE_GEOMETRY = {
    "suite_ball": "fa936cf37615a1f5",
    "suite_walker": "dbc9ad881b1b4ea2",
    "suite_dolly": "8fe59fd929894287",
    "suite_pair": "69ddc28ae46eeed6",
    "suite_stop": "bac1a130f68dce4a",
    "suite_epipolar": "098fe45daaacc45f",
    "suite_phone": "8cb141ad123ff825",
    "suite_walk": "51678ca26bb221d4",
}


def test_suite_geometry_is_frozen():
    import hashlib

    from nsff_core.model.synthetic import SUITE_PRESETS, build_layout, camera_path, suite_config

    assert set(SUITE_GEOMETRY) == set(SUITE_PRESETS)
    s = np.linspace(0, 1, 5)
    for name, expected in SUITE_GEOMETRY.items():
        cfg = suite_config(name)
        lay = build_layout(cfg)
        path = camera_path(cfg.camera, cfg.seed)
        parts = [lay.kind, lay.half, lay.texel, lay.dynamic, lay.hidden, lay.static_poses]
        parts += [np.stack([lay.mover_poses(x) for x in s]), np.stack([path(x) for x in s])]
        h = hashlib.sha256()
        for a in parts:
            h.update(np.round(np.asarray(a, np.float64), 9).tobytes())
        assert h.hexdigest()[:16] == expected, name


def test_schema_lists_every_synthetic_key():
    import yaml

    from .conftest import REPO

    schema = yaml.safe_load((REPO / "rules" / "schemas" / "config.schema.yaml").read_text())
    keys = schema["properties"]["synthetic"]["additionalProperties"]["properties"]
    assert set(keys) == {f.name for f in dataclasses.fields(SyntheticConfig)}


def test_bad_scene_keys_are_refused(variants):
    from nsff_core.model.synthetic import build_layout, source_frames

    for bad in (
        dict(texture="shiny"),
        dict(layout="forest"),
        dict(camera="drone"),
        dict(movers=("ufo",)),
        dict(movers=("sphere",) * 4),
    ):
        with pytest.raises(ValueError, match="synthetic|camera"):
            build_layout(dataclasses.replace(TINY, **bad))
    with pytest.raises(ValueError, match="degradation"):
        source_frames(variants["arc"], dataclasses.replace(TINY, degrade=("sepia",)))


#: small scenes that together use every new primitive, mover, camera path and texture
VARIANTS = {
    "handheld": SyntheticConfig(
        num_frames=6, width=160, height=90, seed=11, novel_offsets=(), layout="mixed",
        texture="smooth", movers=("sphere", "walker"), camera="handheld",
    ),
    "dolly": SyntheticConfig(
        num_frames=8, width=160, height=90, seed=12, novel_offsets=(), layout="mixed",
        texture="high", movers=("stop", "box"), camera="dolly",
    ),
    "epipolar": SyntheticConfig(
        num_frames=6, width=160, height=90, seed=13, novel_offsets=(), layout="mixed",
        texture="medium", movers=("epipolar",), camera="sideways",
    ),
    "arc": SyntheticConfig(
        num_frames=5, width=160, height=90, seed=14, novel_offsets=(), layout="boxes",
        texture="medium", movers=("sphere", "box", "walker"), camera="arc",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def variants() -> dict[str, SyntheticScene]:
    return {name: render_scene(cfg) for name, cfg in VARIANTS.items()}


def _surface_distance(local: np.ndarray, kind: int, half: np.ndarray) -> np.ndarray:
    """|signed distance| (...) of points (..., 3) in a primitive's frame to its surface."""
    from nsff_core.model.synthetic import SPHERE

    if kind == SPHERE:
        return np.abs(np.linalg.norm(local, axis=-1) - half[0])
    q = np.abs(local) - half
    outside = np.linalg.norm(np.maximum(q, 0), axis=-1)
    return np.abs(outside + np.minimum(q.max(axis=-1), 0))


def _movers_at(scene: SyntheticScene, cfg: SyntheticConfig, t: int):
    """Per pixel of frame t: distance (H, W) of its surface point to the nearest mover part,
    that part's index (H, W), and the point in each part's frame (M, H, W, 3)."""
    from nsff_core.model.synthetic import backproject, build_layout

    layout = build_layout(cfg)
    kinds, halves = layout.kind[layout.dynamic], layout.half[layout.dynamic]
    world = backproject(scene.depth[t].astype(np.float64), scene.K, scene.c2w[t])
    local, dist = [], []
    for m, pose in enumerate(scene.object_poses[t]):
        loc = (world - pose[:3, 3]) @ pose[:3, :3]
        local.append(loc)
        dist.append(_surface_distance(loc, kinds[m], halves[m]))
    dist = np.stack(dist)
    return dist.min(axis=0), dist.argmin(axis=0), np.stack(local)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_static_flow_of_new_scenes_is_reprojection(variants, name):
    scene = variants[name]
    assert np.isfinite(scene.flow_fw).all() and np.isfinite(scene.flow_bw).all()
    for i in range(scene.num_frames - 1):
        for a, b, flow in ((i, i + 1, scene.flow_fw[i]), (i + 1, i, scene.flow_bw[i])):
            static = ~scene.dynamic_mask[a]
            pred = _reproject(scene.depth[a], scene.K, scene.c2w[a], scene.c2w[b])
            pred -= _grid(*scene.hw)
            assert np.abs(pred - flow)[static].max() < 1e-3, (name, a, b)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_masks_are_the_movers_and_their_flow_is_their_rigid_motion(variants, name):
    """Every pixel whose surface point lies on a mover part is in the mask and no other; the
    forward flow of a mask pixel is its point moved with its part and projected."""
    scene, cfg = variants[name], VARIANTS[name]
    n_movers = len(cfg.movers)
    assert scene.object_poses.shape[1] >= n_movers
    for t in range(scene.num_frames - 1):
        dist, part, local = _movers_at(scene, cfg, t)
        on_mover = dist < 2e-5
        assert np.array_equal(on_mover, scene.dynamic_mask[t]), (name, t)
        assert scene.dynamic_mask[t].sum() > 20, (name, t)  # the movers are in view
        m = scene.dynamic_mask[t]
        idx = np.flatnonzero(m.ravel())
        loc = local.reshape(local.shape[0], -1, 3)[part.ravel()[idx], idx]
        pose = scene.object_poses[t + 1][part.ravel()[idx]]
        moved = np.einsum("pij,pj->pi", pose[:, :3, :3], loc) + pose[:, :3, 3]
        w2c = np.linalg.inv(scene.c2w[t + 1])
        cam = moved @ w2c[:3, :3].T + w2c[:3, 3]
        xy = cam[:, :2] / cam[:, 2:] * np.diag(scene.K)[:2] + scene.K[:2, 2]
        expected = xy - _grid(*scene.hw)[m]
        assert np.abs(expected - scene.flow_fw[t][m]).max() < 1e-3, (name, t)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_new_scenes_are_photometrically_consistent(variants, name):
    """Sampling frame i+1 at p + flow_fw[i] reproduces frame i on the movers too (textures of
    spheres and boxes move with their surfaces)."""
    scene = variants[name]
    for i in range(scene.num_frames - 1):
        vis = _visible_fw(scene, i)
        img0 = scene.images[i].astype(np.float64)
        warped = _bilinear(scene.images[i + 1], _grid(*scene.hw) + scene.flow_fw[i])
        err = np.abs(warped - img0).mean(axis=-1)
        err_zero = np.abs(scene.images[i + 1].astype(np.float64) - img0).mean(axis=-1)
        dyn = vis & scene.dynamic_mask[i]
        assert err[vis].mean() < 0.35 * err_zero[vis].mean(), (name, i)
        assert err[dyn].mean() < 0.5 * err_zero[dyn].mean(), (name, i)


def test_stopped_mover_rests_exactly(variants):
    """The stop ball's pose is constant for clip phases in [0.35, 0.65] and changes outside;
    during the rest its flow is that of a static surface."""
    scene, cfg = variants["dolly"], VARIANTS["dolly"]
    phases = np.arange(scene.num_frames) / (scene.num_frames - 1)
    resting = np.flatnonzero((phases >= 0.35) & (phases <= 0.65))
    assert len(resting) >= 2
    ball = scene.object_poses[:, 0]  # the first mover: one part
    for a, b in zip(resting[:-1], resting[1:], strict=True):
        assert np.array_equal(ball[a], ball[b])
        _, part, _ = _movers_at(scene, cfg, a)
        on_ball = scene.dynamic_mask[a] & (part == 0)
        assert on_ball.sum() > 20
        pred = _reproject(scene.depth[a], scene.K, scene.c2w[a], scene.c2w[b]) - _grid(*scene.hw)
        assert np.abs(pred - scene.flow_fw[a])[on_ball].max() < 1e-3
    moving = [i for i in range(scene.num_frames - 1) if i not in resting or i + 1 not in resting]
    for i in moving:
        assert not np.allclose(ball[i], ball[i + 1])
    assert not np.allclose(scene.object_poses[resting[0], 1], scene.object_poses[resting[1], 1])


def test_epipolar_mover_flow_lies_on_epipolar_lines(variants):
    """The epipolar box moves (its flow is not a static surface's), yet every point's flow lies
    on the epipolar line of the camera motion: the epipolar test cannot see it."""
    scene = variants["epipolar"]
    h, w = scene.hw
    Kinv = np.linalg.inv(scene.K)
    p = _grid(h, w)
    centres = scene.c2w[:, :3, 3]
    path = centres - centres[0]
    assert np.allclose(np.cross(path, path[-1]), 0, atol=1e-12)  # a straight camera path
    assert not np.allclose(scene.c2w[0, :3, :3], scene.c2w[-1, :3, :3])  # that turns
    for i in range(scene.num_frames - 1):
        m = scene.dynamic_mask[i]
        rel = np.linalg.inv(scene.c2w[i + 1]) @ scene.c2w[i]
        R, t = rel[:3, :3], rel[:3, 3]
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        F = Kinv.T @ tx @ R @ Kinv
        d = _sampson(p, p + scene.flow_fw[i], F)
        assert np.max(d[m]) < 1e-3 and np.max(d[~m]) < 1e-3
        pred = _reproject(scene.depth[i], scene.K, scene.c2w[i], scene.c2w[i + 1]) - p
        assert np.median(np.linalg.norm(scene.flow_fw[i] - pred, axis=-1)[m]) > 0.3


def test_walker_is_articulated(variants):
    """The walker's six parts each move rigidly, but not together: the pose of a leg relative
    to the torso changes (a non-rigid mover with exact flow)."""
    scene = variants["handheld"]
    torso, leg = scene.object_poses[:, 1], scene.object_poses[:, 3]  # sphere, then walker parts
    rel = np.linalg.inv(torso) @ leg
    assert scene.object_poses.shape[1] == 7
    assert np.abs(rel - rel[0]).max() > 0.05


def test_camera_paths():
    """sideways and dolly are straight lines (x, z), walk goes forward with a sway, arc keeps its
    distance to the scene centre, handheld jitters in rotation; every path turns (pure
    translation hides the focal length)."""
    from nsff_core.model.synthetic import CAMERAS, camera_path

    s = np.linspace(0, 1, 25)
    paths = {name: np.stack([camera_path(name, seed=3)(x) for x in s]) for name in CAMERAS}
    for name, c2w in paths.items():
        R = c2w[:, :3, :3]
        assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-12), name
        cos = (np.trace(R[0].T @ R, axis1=1, axis2=2) - 1) / 2
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() > 2.0, name
    side, dolly = paths["sideways"][:, :3, 3], paths["dolly"][:, :3, 3]
    assert np.ptp(side[:, 0]) > 1.0 and np.ptp(side[:, 1:], axis=0).max() == 0
    assert np.ptp(dolly[:, 2]) > 1.0 and np.ptp(dolly[:, :2], axis=0).max() == 0
    # walk: forward (z) over five times its sideways sway
    walk = paths["walk"][:, :3, 3]
    assert np.ptp(walk[:, 2]) > 0.9 and np.ptp(walk[:, 2]) > 5 * np.ptp(walk[:, 0])
    assert np.ptp(walk[:, 0]) > 0.05
    radius = np.linalg.norm(paths["arc"][:, :3, 3] - [0.0, 0.0, 5.0], axis=1)
    assert np.allclose(radius, 5.0)
    # hand-held: frame-to-frame rotation beyond the smooth look-at turn, and seeded
    hh = paths["handheld"]
    steps = [hh[i, :3, :3].T @ hh[i + 1, :3, :3] for i in range(24)]
    angles = np.degrees([np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)) for r in steps])
    assert angles.max() > 0.3 and np.ptp(angles) > 0.1
    other = np.stack([camera_path("handheld", seed=4)(x) for x in s])
    assert not np.allclose(hh, other)


def test_sampling_at_another_size(variants):
    """``size`` samples the same cameras on another pixel grid: coarse pixel x is fine pixel
    3x + 1 at three times the size, so depth and masks agree there and K is scaled exactly."""
    cfg = dataclasses.replace(VARIANTS["epipolar"], num_frames=2, width=64, height=36)
    coarse = render_scene(cfg)
    fine = render_scene(cfg, size=(192, 108))
    assert fine.hw == (108, 192) and coarse.hw == (36, 64)
    assert np.allclose(fine.K[:2, :2], 3 * coarse.K[:2, :2])
    assert np.allclose(fine.K[:2, 2], (coarse.K[:2, 2] + 0.5) * 3 - 0.5)
    sub = fine.depth[:, 1::3, 1::3]
    assert np.median(np.abs(sub - coarse.depth)) < 1e-5
    assert (fine.dynamic_mask[:, 1::3, 1::3] == coarse.dynamic_mask).mean() > 0.995
    same = coarse.dynamic_mask[:-1] == fine.dynamic_mask[:-1, 1::3, 1::3]
    close = np.abs(fine.flow_fw[:, 1::3, 1::3] - 3 * coarse.flow_fw).max(axis=-1) < 0.05
    assert close[same].mean() > 0.99


def test_degradations_touch_the_video_only(variants):
    from nsff_core.model.synthetic import source_frames

    cfg = VARIANTS["handheld"]
    scene = variants["handheld"]
    clean = scene.images.copy()
    assert source_frames(scene, cfg) is scene.images
    out = {}
    for d in ("blur", "noise", "jpeg70"):
        c = dataclasses.replace(cfg, degrade=(d,))
        out[d] = source_frames(scene, c)
        assert np.array_equal(out[d], source_frames(scene, c)), d  # deterministic
        diff = np.abs(out[d].astype(float) - clean).mean()
        assert 0.3 < diff < 12.0, (d, diff)
    assert np.array_equal(scene.images, clean)  # the ground truth stays clean
    # noise is independent per frame and pixel; blur smooths along the motion
    noise = out["noise"].astype(float) - clean
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.05

    def grad(x):
        return np.abs(np.diff(x.astype(float), axis=2)).mean()

    assert grad(out["blur"]) < 0.9 * grad(clean)
    both = source_frames(scene, dataclasses.replace(cfg, degrade=("blur", "noise", "jpeg70")))
    assert (
        np.abs(both.astype(float) - clean).mean() > np.abs(out["blur"].astype(float) - clean).mean()
    )


def test_write_scene_puts_degraded_frames_in_the_video(variants, tmp_path):
    import imageio_ffmpeg

    from nsff_core.model.synthetic import source_frames

    cfg = dataclasses.replace(VARIANTS["handheld"], degrade=("noise",))
    scene = variants["handheld"]
    frames = source_frames(scene, cfg)
    write_scene(scene, tmp_path / "v.mp4", tmp_path / "gt.npz", frames)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4"))
    next(reader)
    h, w = scene.hw
    decoded = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    luma = np.array([0.299, 0.587, 0.114])
    to_noisy = np.abs(decoded @ luma - frames @ luma).mean()
    to_clean = np.abs(decoded @ luma - scene.images @ luma).mean()
    assert to_noisy < to_clean
    assert np.array_equal(load_ground_truth(tmp_path / "gt.npz").images, scene.images)
