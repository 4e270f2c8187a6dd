"""Exports for other tools (nsff_core.workflow.stages.export, rules export_colmap and export): the COLMAP text
model, nerfstudio's transforms.json, 16-bit depth PNGs, nerfstudio masks and the static PLY.

Order matters in this file: the tests that write PNGs run before the first one that imports
pycolmap (pycolmap 4.2.1's zlib can abort a later PNG write in the same process).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from nsff_core.config import SyntheticConfig
from nsff_core.errors import CorruptFileError, StageError
from nsff_core.model import io
from nsff_core.model.cameras import invert_rigid, project, rigid_matrix, transform_c2w
from nsff_core.model.synthetic import backproject, rotation
from nsff_core.workflow.stages import export

# a known similarity true world -> "SfM" world
SIM_S, SIM_T = 2.0, np.array([0.5, -1.0, 3.0])
SIM_R = rotation([0.2, 1.0, -0.4], 0.5)

#: nerfstudio's transforms.json fields that the export fills (docs.nerf.studio, "Data
#: conventions"; the dataparser reads them), as a JSON schema
NERFSTUDIO_SCHEMA = {
    "type": "object",
    "required": ["camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "frames"],
    "properties": {
        "camera_model": {"enum": ["PINHOLE", "OPENCV"]},
        "fl_x": {"type": "number", "exclusiveMinimum": 0},
        "fl_y": {"type": "number", "exclusiveMinimum": 0},
        "cx": {"type": "number"},
        "cy": {"type": "number"},
        "w": {"type": "integer", "minimum": 1},
        "h": {"type": "integer", "minimum": 1},
        "ply_file_path": {"type": "string"},
        "frames": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["file_path", "transform_matrix", "mask_path", "depth_file_path"],
                "properties": {
                    "file_path": {"type": "string"},
                    "mask_path": {"type": "string"},
                    "depth_file_path": {"type": "string"},
                    "transform_matrix": {
                        "type": "array",
                        "minItems": 4,
                        "maxItems": 4,
                        "items": {
                            "type": "array",
                            "minItems": 4,
                            "maxItems": 4,
                            "items": {"type": "number"},
                        },
                    },
                },
            },
        },
    },
}


def check_transforms(path: Path, n: int) -> dict:
    """transforms.json at ``path``: nerfstudio's schema, ``n`` frames, rigid camera-to-world
    matrices, and every referenced file existing relative to the json's folder."""
    meta = json.loads(path.read_text())
    jsonschema.validate(meta, NERFSTUDIO_SCHEMA)
    assert len(meta["frames"]) == n
    for frame in meta["frames"]:
        T = np.array(frame["transform_matrix"])
        np.testing.assert_allclose(T[3], [0, 0, 0, 1])
        np.testing.assert_allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-9)
        assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)
        for key in ("file_path", "mask_path", "depth_file_path"):
            assert (path.parent / frame[key]).is_file(), frame[key]
    assert (path.parent / meta["ply_file_path"]).is_file()
    return meta


# --------------------------------------------------------------------------- conventions


def test_opencv_to_opengl_of_a_known_pose():
    """A camera at (1, 2, 3) looking along world +x with world -z up (OpenCV: x right, y down,
    z forward): in OpenGL axes its x stays, y points up (world +z), z back (world -x)."""
    right, down, forward = [0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]
    c2w = rigid_matrix(np.stack([right, down, forward], axis=1), [1.0, 2.0, 3.0])
    assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
    gl = export.opencv_to_opengl(c2w)
    np.testing.assert_array_equal(gl[:3, 0], right)
    np.testing.assert_array_equal(gl[:3, 1], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(gl[:3, 2], [-1.0, 0.0, 0.0])
    np.testing.assert_array_equal(gl[:3, 3], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(export.opencv_to_opengl(gl), c2w)


def test_nerfstudio_camera_projects_as_cameras_npz():
    """A world point seen through the transforms.json camera (OpenGL axes, looking along -z,
    pixel centres at +0.5) lands on the pixel that cameras.npz's K and c2w give."""
    rng = np.random.default_rng(1)
    K = np.array([[210.0, 0, 79.5], [0, 205.0, 44.5], [0, 0, 1]])
    c2w = np.stack(
        [rigid_matrix(rotation(rng.normal(size=3), a), rng.normal(size=3)) for a in (0.3, -0.7)]
    )
    cams = {
        "c2w": c2w,
        "K": K,
        "hw": np.array([90, 160]),
        "names": np.array(["a.png", "b.png"]),
        "registered": np.array([True, False]),
    }
    meta = export.nerfstudio_transforms(cams, ["../frames/a.png", "../frames/b.png"])
    assert meta["w"] == 160 and meta["h"] == 90 and meta["camera_model"] == "PINHOLE"
    assert [f["registered"] for f in meta["frames"]] == [True, False]
    assert [f["time"] for f in meta["frames"]] == [0.0, 1.0]
    for i, frame in enumerate(meta["frames"]):
        X = (c2w[i] @ [0.3, -0.2, 4.0, 1.0])[:3]  # a point 4 units in front of camera i
        p = invert_rigid(np.array(frame["transform_matrix"])) @ np.append(X, 1.0)
        assert p[2] < 0  # in front of an OpenGL camera
        u = meta["fl_x"] * p[0] / -p[2] + meta["cx"] - 0.5
        v = meta["fl_y"] * -p[1] / -p[2] + meta["cy"] - 0.5
        xy, z = project(K, c2w[i], X)
        np.testing.assert_allclose([u, v], xy, atol=1e-9)
        assert z == pytest.approx(4.0)


def test_depth_png_round_trip(tmp_path):
    scale = 0.01
    depth = np.array([[1.0, 2.344, 655.35], [np.nan, -1.0, 700.0]])
    v = export.depth_to_png(depth, scale)
    assert v.dtype == np.uint16
    np.testing.assert_array_equal(v, [[100, 234, 65535], [0, 0, 0]])
    export.write_depth_png(tmp_path / "d.png", v)
    back = export.read_depth_png(tmp_path / "d.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, v)
    d = export.png_to_depth(back, scale)
    ok = v > 0
    assert np.all(np.abs(d[ok] - depth[ok]) <= scale / 2 + 1e-12)
    assert np.isnan(d[~ok]).all()
    io.write_image(tmp_path / "eight.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(CorruptFileError, match="16-bit"):
        export.read_depth_png(tmp_path / "eight.png")


def test_ply_header_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(57, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(57, 3), dtype=np.uint8)
    export.write_ply(tmp_path / "p.ply", xyz, rgb)
    data = (tmp_path / "p.ply").read_bytes()
    header = data[: data.index(b"end_header\n")].decode().splitlines()
    assert header == [
        "ply",
        "format binary_little_endian 1.0",
        "element vertex 57",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    ]
    assert len(data) == len(b"\n".join(map(str.encode, header))) + len(b"\nend_header\n") + 57 * 15
    back_xyz, back_rgb = export.read_ply(tmp_path / "p.ply")
    np.testing.assert_array_equal(back_xyz, xyz)
    np.testing.assert_array_equal(back_rgb, rgb)
    (tmp_path / "short.ply").write_bytes(data[:-1])
    with pytest.raises(ValueError, match="bytes of vertices"):
        export.read_ply(tmp_path / "short.ply")


# --------------------------------------------------------------------------- export_scene


@pytest.fixture(scope="module")
def gt_scene():
    from nsff_core.model.synthetic import render_scene

    return render_scene(SyntheticConfig(num_frames=4, width=48, height=32, novel_offsets=()))


@pytest.fixture(scope="module")
def scene_dir(gt_scene, tmp_path_factory):
    """results/<scene>/ of a tiny synthetic scene in a known "SfM" world (the true one through
    a similarity): frames, masks (true dynamic pixels), cameras.npz and an untrained
    checkpoint holding the scene normalisation."""
    import pytorch_lightning as pl
    import torch

    from nsff_core.config import TrainConfig
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.rays import normalize_poses
    from nsff_core.model.system import NSFFSystem

    d = tmp_path_factory.mktemp("exportscene")
    n, hw = gt_scene.num_frames, gt_scene.hw
    (d / "frames").mkdir()
    (d / "masks").mkdir()
    for i in range(n):
        io.write_image(d / "frames" / io.frame_name(i), gt_scene.images[i])
        io.write_mask(d / "masks" / io.frame_name(i), gt_scene.dynamic_mask[i])
    c2w = transform_c2w(SIM_S, SIM_R, SIM_T, gt_scene.c2w)
    depth = SIM_S * gt_scene.depth.reshape(n, -1)
    io.write_cameras(
        d / "cameras.npz",
        c2w,
        gt_scene.K,
        hw,
        depth.min(1),
        depth.max(1),
        [io.frame_name(i) for i in range(n)],
    )
    _, norm = normalize_poses(c2w, 0.75 * float(depth.min()))
    cfg = TrainConfig(width=16, depth=2, time_dim=4, num_samples=8, batch_size=32)
    c2w_nsff = norm.apply_c2w(c2w)
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
    return d


def true_ndc_depth(gt_scene, norm, i: int) -> np.ndarray:
    """The NDC ray parameter (H*W,) of the true surface at every pixel of frame i: the true
    points in the SfM world, normalised, warped to NDC, measured along the pixel's NDC ray."""
    import torch

    from nsff_core.model.rays import get_rays, rays_to_ndc, world_to_ndc

    c2w = transform_c2w(SIM_S, SIM_R, SIM_T, gt_scene.c2w[i : i + 1])
    X = backproject(SIM_S * gt_scene.depth[i].astype(np.float64), gt_scene.K, c2w[0])
    x_nsff = torch.as_tensor(norm.apply_points(X.reshape(-1, 3)))
    c2w_nsff = torch.as_tensor(norm.apply_c2w(c2w)[0])
    o, d = rays_to_ndc(*get_rays(gt_scene.K, c2w_nsff, gt_scene.hw), gt_scene.K)
    x_ndc = world_to_ndc(x_nsff, gt_scene.K)
    return ((x_ndc[:, 2] - o[:, 2]) / d[:, 2]).numpy()


@pytest.fixture()
def true_renders(gt_scene, monkeypatch):
    """render_view replaced by the exact scene: depth and static depth are the true surface's
    NDC ray parameter (pixel (0, 0) of every frame: NDC infinity), static colour the frame."""
    import torch

    from nsff_core.model import interp
    from nsff_core.model.render import RenderImage

    def fake(system, c2w_nsff, K, hw, time, chunk=4096, plane_chunk=None):
        i = int(round(time))
        norm = system.meta.normalization
        t = true_ndc_depth(gt_scene, norm, i)
        t[0] = 1.0
        t = torch.as_tensor(t, dtype=torch.float32)
        rgb = torch.as_tensor(gt_scene.images[i].reshape(-1, 3) / 255.0, dtype=torch.float32)
        zero = torch.zeros_like(t)
        return RenderImage(rgb, t, rgb, t.clone(), rgb, zero)

    monkeypatch.setattr(interp, "render_view", fake)


def outputs_in(d: Path) -> dict[str, Path]:
    e = d / "export"
    return {
        "transforms": e / "transforms.json",
        "depth": e / "depth",
        "depth_scale": e / "depth_scale.json",
        "masks": e / "masks",
        "points": e / "points.ply",
    }


def test_export_scene_writes_true_depth_masks_points_and_transforms(
    gt_scene, scene_dir, true_renders, tmp_path
):
    d = tmp_path / "scene"
    shutil.copytree(scene_dir, d)
    out = outputs_in(d)
    summary = export.export_scene(
        d / "train" / "last.ckpt", d / "cameras.npz", d / "frames", d / "masks", out, scene="s"
    )
    n, (h, w) = gt_scene.num_frames, gt_scene.hw
    cams = io.read_cameras(d / "cameras.npz")
    meta = check_transforms(out["transforms"], n)
    assert meta["frames"][0]["file_path"] == "../frames/00000.png"  # the frames, not copies
    assert not list(out["transforms"].parent.glob("*.tmp-*")), "scratch files left"

    # depth: the true camera z in SfM units, to half a step; NDC infinity -> 0
    info = json.loads(out["depth_scale"].read_text())
    scale = info["scale"]
    assert scale == pytest.approx(export.FAR_FACTOR * cams["far"].max() / 65535)
    assert meta["depth_unit_scale_factor"] == scale
    for i in range(n):
        v = export.read_depth_png(out["depth"] / io.frame_name(i))
        assert v.shape == (h, w) and v[0, 0] == 0 and (v.reshape(-1)[1:] > 0).all()
        got = export.png_to_depth(v, scale).reshape(-1)[1:]
        want = SIM_S * gt_scene.depth[i].reshape(-1)[1:]
        np.testing.assert_allclose(got, want, atol=scale / 2 + 1e-5 * want.max())
        # nerfstudio masks: 0 = ignore = our dynamic pixels
        m = io.read_image(out["masks"] / io.frame_name(i))[..., 0]
        np.testing.assert_array_equal(m == 0, gt_scene.dynamic_mask[i])

    # the point cloud: the true static points of every STRIDE-th pixel, with their colours
    want_xyz, want_rgb = [], []
    for i in range(n):
        c2w = transform_c2w(SIM_S, SIM_R, SIM_T, gt_scene.c2w[i : i + 1])[0]
        X = backproject(SIM_S * gt_scene.depth[i].astype(np.float64), gt_scene.K, c2w)
        keep = np.zeros((h, w), bool)
        off = i % export.STRIDE
        keep[off :: export.STRIDE, off :: export.STRIDE] = True
        keep &= ~gt_scene.dynamic_mask[i]
        keep[0, 0] = False  # at NDC infinity
        want_xyz.append(X[keep])
        want_rgb.append(gt_scene.images[i][keep])
    want_xyz, want_rgb = np.concatenate(want_xyz), np.concatenate(want_rgb)
    xyz, rgb = export.read_ply(out["points"])
    assert summary["points"] == len(xyz) == len(want_xyz)
    a, b = np.lexsort(np.c_[xyz, rgb].T), np.lexsort(np.c_[want_xyz, want_rgb].T)
    np.testing.assert_allclose(xyz[a], want_xyz[b], atol=1e-4 * np.abs(want_xyz).max())
    np.testing.assert_array_equal(rgb[a], want_rgb[b])


def test_export_scene_caps_the_point_count(scene_dir, true_renders, tmp_path):
    d = tmp_path / "scene"
    shutil.copytree(scene_dir, d)
    out = outputs_in(d)
    export.export_scene(
        d / "train" / "last.ckpt", d / "cameras.npz", d / "frames", d / "masks", out, max_points=50
    )
    assert len(export.read_ply(out["points"])[0]) == 50


def test_export_scene_bad_inputs_name_scene_and_rule_and_leave_nothing(scene_dir, tmp_path):
    d = tmp_path / "scene"
    shutil.copytree(scene_dir, d)
    out = outputs_in(d)
    args = (d / "train" / "last.ckpt", d / "cameras.npz", d / "frames", d / "masks", out)
    (d / "masks" / "00002.png").unlink()
    with pytest.raises(StageError, match=r"scene 's', rule 'export'.*masks") as exc:
        export.export_scene(*args, scene="s")
    assert "rule 'masks'" in str(exc.value)
    shutil.copy(d / "masks" / "00001.png", d / "masks" / "00002.png")
    (d / "train" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="last.ckpt") as exc:
        export.export_scene(*args, scene="s")
    assert "rule 'train'" in str(exc.value.to_stage_error("s", "export"))
    assert not (d / "export").exists() or not any((d / "export").iterdir())


# --------------------------------------------------------------------------- COLMAP (pycolmap)


def synthetic_model(tmp_path: Path, sfm_hw=(180, 320), hw=(90, 162)) -> tuple[Path, Path]:
    """A COLMAP binary model at ``sfm_hw`` (4 frames, frame 2 not registered, 40 points seen
    by every registered frame at their exact projections) and a cameras.npz at ``hw``."""
    import pycolmap

    from nsff_core.model.cameras import colmap_to_opencv_pixels, intrinsics_matrix
    from nsff_core.priors.sfm import training_intrinsics

    rng = np.random.default_rng(3)
    f, cx, cy = 250.0, sfm_hw[1] / 2, sfm_hw[0] / 2  # COLMAP pixel convention
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(
        camera_id=1,
        model="SIMPLE_PINHOLE",
        width=sfm_hw[1],
        height=sfm_hw[0],
        params=[f, cx, cy],
    )
    rec.add_camera_with_trivial_rig(camera)
    names = [io.frame_name(i) for i in range(4)]
    c2w = np.stack(
        [rigid_matrix(rotation([0, 1, 0], 0.05 * i), [0.3 * i, 0.0, 0.0]) for i in range(4)]
    )
    points = rng.uniform([-2, -1, 5], [2, 1, 9], size=(40, 3))
    K_sfm = intrinsics_matrix(f, f, *colmap_to_opencv_pixels([cx, cy]))
    registered = np.array([True, True, False, True])
    image_ids = {}
    for i in np.flatnonzero(registered):
        xy, _ = project(K_sfm, c2w[i], points)
        image = pycolmap.Image(name=names[i], keypoints=xy + 0.5, camera_id=1, image_id=int(i) + 1)
        w2c = invert_rigid(c2w[i])
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3]))
        image_ids[i] = int(i) + 1
    for j, X in enumerate(points):
        track = pycolmap.Track([pycolmap.TrackElement(image_ids[i], j) for i in image_ids])
        rec.add_point3D(X, track, np.array([j, 2 * j, 3 * j], np.uint8))
    sparse = tmp_path / "sfm" / "sparse" / "0"
    sparse.mkdir(parents=True)
    rec.write(str(sparse))
    K = training_intrinsics((f, f), (cx, cy), sfm_hw, hw)
    io.write_cameras(
        tmp_path / "cameras.npz", c2w, K, hw, np.full(4, 4.0), np.full(4, 9.0), names, registered
    )
    return sparse, tmp_path / "cameras.npz"


def test_colmap_text_model_at_training_size(tmp_path):
    import pycolmap

    sparse, cameras = synthetic_model(tmp_path)
    summary = export.write_colmap_text(sparse, cameras, tmp_path / "colmap", scene="s")
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        assert (tmp_path / "colmap" / name).is_file()
    binary = pycolmap.Reconstruction(str(sparse))
    text = pycolmap.Reconstruction(str(tmp_path / "colmap"))
    assert text.num_reg_images() == binary.num_reg_images() == summary["images"] == 3
    assert text.num_points3D() == binary.num_points3D() == summary["points3D"] == 40
    assert summary["not_registered"] == ["00002.png"]
    cams = io.read_cameras(cameras)
    K, (h, w) = cams["K"], cams["hw"]
    camera = text.cameras[1]
    assert camera.model.name == "PINHOLE" and (camera.width, camera.height) == (w, h)
    np.testing.assert_allclose(camera.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])
    assert K[0, 0] != K[1, 1]  # 320x180 -> 162x90 scales x and y differently
    for image in text.images.values():
        i = [str(n) for n in cams["names"]].index(image.name)
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        np.testing.assert_allclose(invert_rigid(w2c), cams["c2w"][i], atol=1e-9)
        # every observation is where cameras.npz projects its point (COLMAP: +0.5)
        for p in image.points2D:
            X = text.points3D[p.point3D_id].xyz
            xy, _ = project(K, cams["c2w"][i], X)
            np.testing.assert_allclose(p.xy, xy + 0.5, atol=1e-6)


def test_colmap_text_model_of_a_real_sfm_run(tiny_scene_dir, tmp_path):
    import pycolmap

    sparse = tiny_scene_dir / "sfm" / "sparse" / "0"
    export.write_colmap_text(sparse, tiny_scene_dir / "cameras.npz", tmp_path / "colmap")
    binary = pycolmap.Reconstruction(str(sparse))
    text = pycolmap.Reconstruction(str(tmp_path / "colmap"))
    assert text.num_reg_images() == binary.num_reg_images() > 0
    assert text.num_points3D() == binary.num_points3D() > 0
    np.testing.assert_allclose(
        text.compute_mean_reprojection_error(), binary.compute_mean_reprojection_error()
    )


def test_colmap_bad_inputs_name_scene_and_rule(tmp_path):
    sparse, cameras = synthetic_model(tmp_path)
    out = tmp_path / "colmap"
    whole = (sparse / "points3D.bin").read_bytes()
    # truncated or garbled: refused before pycolmap reads it (which would allocate for minutes)
    for name, data in [("points3D.bin", whole[: len(whole) // 2]), ("images.bin", b"\x01\x02x")]:
        kept = (sparse / name).read_bytes()
        (sparse / name).write_bytes(data)
        with pytest.raises(StageError, match=rf"scene 's', rule 'export_colmap'.*{name}") as exc:
            export.write_colmap_text(sparse, cameras, out, scene="s")
        assert "rule 'sfm'" in str(exc.value) and not out.exists()
        (sparse / name).write_bytes(kept)
    (sparse / "points3D.bin").unlink()
    with pytest.raises(StageError, match="lacks points3D.bin"):
        export.write_colmap_text(sparse, cameras, out, scene="s")
    sparse2, _ = synthetic_model(tmp_path / "other")
    cams = io.read_cameras(cameras)
    cams["registered"][:] = True  # a cameras.npz of another SfM run
    np.savez(tmp_path / "other.npz", **cams)
    with pytest.raises(StageError, match="different SfM runs"):
        export.write_colmap_text(sparse2, tmp_path / "other.npz", out, scene="s")
    assert not out.exists()


def test_ply_reads_in_pycolmap(tmp_path):
    """An independent reader: pycolmap's PLY import sees the same points and colours."""
    import pycolmap

    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(20, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(20, 3), dtype=np.uint8)
    export.write_ply(tmp_path / "p.ply", xyz, rgb)
    rec = pycolmap.Reconstruction()
    rec.import_PLY(str(tmp_path / "p.ply"))
    assert rec.num_points3D() == 20
    got = sorted((tuple(np.round(p.xyz, 5)), tuple(p.color)) for p in rec.points3D.values())
    want = sorted(
        (tuple(np.round(x.astype(np.float64), 5)), tuple(c)) for x, c in zip(xyz, rgb, strict=True)
    )
    assert got == want


# --------------------------------------------------------------------------- the rules


@pytest.mark.stage
@pytest.mark.workflow
def test_export_rules_on_a_trained_tiny_scene(tiny_scene_dir, tmp_path):
    """Rules export_colmap and export through Snakemake on a preprocessed tiny scene with a
    briefly trained model: every output, read back."""
    import pycolmap

    from nsff_core.config import TrainConfig
    from nsff_core.workflow.report import job_outcome
    from nsff_core.workflow.stage import FINISHED
    from nsff_core.workflow.stages.train import train_scene

    from .test_workflow import TINY_TRAIN, make_workdir, snakemake

    sheet = "scene\tsource\ttrain_preset\tsplits\ntiny\tsynthetic:tiny\ttiny\ttest\n"
    wd = make_workdir(tmp_path, sheet, train_presets={"tiny": TINY_TRAIN})
    res = wd / "results" / "tiny"
    shutil.copytree(tiny_scene_dir, res)
    tiny = dict(width=16, depth=2, time_dim=4, num_samples=8, batch_size=32, max_steps=2)
    train_scene(res, res / "train", TrainConfig(**tiny), scene="tiny")
    targets = ["results/tiny/export/transforms.json", "results/tiny/export/colmap"]
    r = snakemake(wd, *targets, "--cores", "1", "--allowed-rules", "export", "export_colmap")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for rule in ("export", "export_colmap"):
        assert job_outcome(res / "logs" / f"{rule}.log") == FINISHED
    ex = res / "export"
    n = len(io.list_frames(res / "frames"))
    check_transforms(ex / "transforms.json", n)
    depth = [export.read_depth_png(p) for p in sorted((ex / "depth").glob("*.png"))]
    assert len(depth) == n and depth[0].shape == tuple(io.read_cameras(res / "cameras.npz")["hw"])
    assert json.loads((ex / "depth_scale.json").read_text())["scale"] > 0
    xyz, _ = export.read_ply(ex / "points.ply")
    header = (ex / "points.ply").read_bytes()[:200].decode(errors="replace")
    assert f"element vertex {len(xyz)}\n" in header and len(xyz) > 0
    binary = pycolmap.Reconstruction(str(res / "sfm" / "sparse" / "0"))
    text = pycolmap.Reconstruction(str(ex / "colmap"))
    assert (text.num_reg_images(), text.num_points3D()) == (
        binary.num_reg_images(),
        binary.num_points3D(),
    )
