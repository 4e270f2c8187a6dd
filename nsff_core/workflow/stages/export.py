"""Exports of a scene for other tools (rules ``export_colmap`` and ``export``).

Everything lands in ``results/<scene>/export/``, in the SfM world frame of ``cameras.npz`` (the
frame COLMAP chose, its units: arbitrary, not metres), at the training resolution of
``frames/``:

- ``colmap/`` (rule ``export_colmap``): the COLMAP model of rule ``sfm`` as text
  (``cameras.txt``, ``images.txt``, ``points3D.txt``, and pycolmap's ``rigs.txt`` and
  ``frames.txt``). SfM may run at another size than training (``sfm.max_size``); the model is
  rescaled to the training size, so its camera matches ``frames/`` and the ``K`` of
  ``cameras.npz`` (``cx_colmap = K[0, 2] + 0.5``: COLMAP puts pixel centres at ``c + 0.5``).
  The camera becomes ``PINHOLE`` (``OPENCV`` for a model with distortion), because the two axes
  may scale by slightly different factors (the training size is rounded to even numbers).
  Image names are the frame names, so ``frames/`` is the image folder. Frames SfM did not
  register (``registered`` false in ``cameras.npz``; their poses were interpolated in time)
  are not in the model: it holds what COLMAP estimated, and nothing else.
- ``transforms.json`` (rule ``export``): nerfstudio's format. One shared pinhole camera
  (``fl_x``, ``fl_y``, ``cx``, ``cy`` in nerfstudio's pixel convention, centres at ``c + 0.5``
  as COLMAP's), and per frame ``file_path`` (``../frames/<name>``, relative to the export folder:
  the frames are not copied), ``transform_matrix`` (camera to world, OpenGL/Blender camera axes:
  x right, y up, looking along -z), ``mask_path``, ``depth_file_path``, and two keys nerfstudio
  ignores: ``time`` (frame index / (N - 1), in [0, 1]) and ``registered``. Every frame is listed,
  also those with interpolated poses. ``ply_file_path`` names the point cloud (nerfstudio's
  splatfacto starts from it).
- ``masks/<name>.png``: nerfstudio masks, 0 = ignore (the dynamic pixels of ``masks/``, which
  marks them 255), 255 = use.
- ``depth/<name>.png``: 16-bit camera-z depth of the trained model at each frame's pose and
  time (static and dynamic content), ``d = v * scale`` in SfM units, ``v = 0`` where the model
  sees nothing within reach (empty space, beyond ``FAR_FACTOR`` x the farthest SfM depth).
  ``depth_scale.json`` holds ``scale`` (also ``depth_unit_scale_factor`` in
  ``transforms.json``: nerfstudio's option of that name turns the values into its units).
- ``points.ply``: the static scene as coloured points (binary little-endian PLY, float
  ``x y z``, uchar ``red green blue``): the static field's depth and colour of every frame,
  every ``stride``-th pixel, back-projected with the frame's camera; dynamic pixels (``masks/``)
  and pixels without valid depth are left out, then at most ``max_points`` are kept (a seeded
  random subset).

The model's depth is an expected NDC ray parameter (:mod:`nsff_core.model.render`);
:func:`ndc_depth_to_points` takes it back through NDC and the scene normalisation to SfM-world
points, whose camera z is the exported depth.

Order of work: rule ``export`` writes every PNG; pycolmap is imported only by
:func:`write_colmap_text` (rule ``export_colmap``, its own process), because pycolmap 4.2.1's
zlib can abort a later PNG write in the same process (see :mod:`nsff_core.priors.sfm`).

Every output is written under a scratch name and renamed when all of a rule's outputs are
complete (``transforms.json`` last), so a failed or killed export leaves nothing that looks
finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from nsff_core.config import RenderSplitConfig
from nsff_core.errors import StageError
from nsff_core.model import cameras as cam
from nsff_core.model import io
from nsff_core.progress import Progress

log = logging.getLogger(__name__)

#: depths beyond this factor times the farthest per-frame SfM depth (``cameras.npz`` ``far``,
#: the 99th percentile of the depths of the points a frame sees) count as "nothing within
#: reach" (the model's empty space ends at NDC infinity): 0 in the depth PNGs, no point
FAR_FACTOR = 3.0
#: largest value of a 16-bit depth PNG; the depth limit maps to it
DEPTH_PNG_MAX = 65535
#: point cloud: every STRIDE-th pixel in x and y of each frame, at most MAX_POINTS points
STRIDE = 2
MAX_POINTS = 300_000
#: what pycolmap writes with ``write_text`` (rigs and frames: COLMAP 3.12+ text format)
COLMAP_TEXT_FILES = ("cameras.txt", "images.txt", "points3D.txt", "rigs.txt", "frames.txt")
COLMAP_BINARY_FILES = ("cameras.bin", "images.bin", "points3D.bin")


# --------------------------------------------------------------------------- conventions


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world poses (..., 4, 4) from OpenCV camera axes (x right, y down, z forward)
    to OpenGL/Blender/nerfstudio axes (x right, y up, z back): the y and z columns of the
    rotation change sign; the world frame and the centre stay. An involution."""
    out = np.array(c2w, dtype=np.float64)
    out[..., :3, 1:3] *= -1.0
    return out


def depth_to_png(depth: np.ndarray, scale: float) -> np.ndarray:
    """Depth (H, W) in SfM units -> uint16 ``round(d / scale)``; 0 where the depth is not
    finite, not positive or beyond ``DEPTH_PNG_MAX * scale``."""
    d = np.asarray(depth, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.rint(d / scale)
    ok = np.isfinite(v) & (d > 0) & (v <= DEPTH_PNG_MAX)
    return np.where(ok, np.maximum(v, 1), 0).astype(np.uint16)


def png_to_depth(v: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`depth_to_png`: float64 depth, NaN where ``v`` is 0."""
    v = np.asarray(v)
    return np.where(v > 0, v.astype(np.float64) * scale, np.nan)


def write_depth_png(path: str | os.PathLike, v: np.ndarray) -> None:
    """Write a uint16 (H, W) image as a 16-bit grey PNG."""
    import cv2

    if v.dtype != np.uint16 or v.ndim != 2:
        raise ValueError(f"expected a (H, W) uint16 image, got {v.dtype} {v.shape}")
    ok, buf = cv2.imencode(".png", v)
    if not ok:
        raise OSError(f"cannot encode {path}")
    buf.tofile(str(path))


def read_depth_png(path: str | os.PathLike) -> np.ndarray:
    """Read a 16-bit depth PNG as uint16 (H, W) (CorruptFileError if it is not one)."""
    import cv2

    v = io._decode(path, cv2.IMREAD_UNCHANGED, "export")
    if v.dtype != np.uint16 or v.ndim != 2:
        raise io._corrupt(path, f"not a 16-bit grey PNG ({v.dtype} {v.shape})", "export", True)
    return v


# --------------------------------------------------------------------------- PLY


def write_ply(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Write points as a binary little-endian PLY: float32 ``x y z``, uchar ``red green blue``.

    Written with numpy (a fixed header and one structured array): the format is a few lines
    of header, and no PLY library is a dependency of the project.

    Args:
        xyz: (M, 3) positions; rgb: (M, 3) uint8 colours.
    """
    xyz = np.asarray(xyz)
    rgb = np.asarray(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape or rgb.dtype != np.uint8:
        raise ValueError(f"expected (M, 3) positions and uint8 colours, got {xyz.shape}, {rgb}")
    vertex = np.empty(
        len(xyz),
        dtype=[
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
        ],
    )
    for i, axis in enumerate("xyz"):
        vertex[axis] = xyz[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = rgb[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply`: (M, 3) float32 positions, (M, 3) uint8 colours.

    Raises:
        ValueError: not a binary little-endian PLY with exactly those vertex properties, or
            a body shorter or longer than the header says.
    """
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: not binary little-endian")
    counts = [int(s.split()[2]) for s in lines if s.startswith("element vertex ")]
    props = [s.split()[1:] for s in lines if s.startswith("property ")]
    want = [["float", a] for a in "xyz"] + [["uchar", c] for c in ("red", "green", "blue")]
    if len(counts) != 1 or props != want:
        raise ValueError(f"{path}: unexpected elements or properties {props}")
    body = data[end + len(b"end_header\n") :]
    dtype = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    if len(body) != counts[0] * dtype.itemsize:
        raise ValueError(f"{path}: {len(body)} bytes of vertices, expected {counts[0]} x 15")
    v = np.frombuffer(body, dtype=dtype)
    return v["xyz"].copy(), v["rgb"].copy()


# --------------------------------------------------------------------------- COLMAP model


#: parameters per COLMAP camera model id (COLMAP's models.h): SIMPLE_PINHOLE, PINHOLE,
#: SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE, FULL_OPENCV, FOV, SIMPLE_RADIAL_FISHEYE,
#: RADIAL_FISHEYE, THIN_PRISM_FISHEYE, RAD_TAN_THIN_PRISM_FISHEYE
_CAMERA_PARAMS = (3, 4, 4, 5, 8, 8, 12, 5, 4, 5, 12, 16)


def colmap_binary_problem(sparse_dir: str | os.PathLike) -> str | None:
    """What is wrong with the binary COLMAP model in ``sparse_dir``, or None if its files are
    complete.

    pycolmap 4.2.1 does not check record counts against the file: a truncated or garbled
    ``points3D.bin`` makes it allocate until ``bad_alloc`` (minutes, all memory). So the record
    structure of ``cameras.bin``, ``images.bin`` and ``points3D.bin`` is walked here first (a
    count, then records of known or announced sizes that must end exactly at the end of the
    file); ``rigs.bin`` and ``frames.bin`` (COLMAP 3.12+) get a bound of their count by their
    size.
    """
    import struct

    sparse_dir = Path(sparse_dir)

    def walk(name: str, record) -> str | None:
        data = (sparse_dir / name).read_bytes()
        try:
            (count,) = struct.unpack_from("<Q", data, 0)
            off = 8
            for _ in range(count):
                off = record(data, off)
                if off > len(data):
                    raise struct.error
        except struct.error:
            return f"{name} is truncated or garbled (it ends inside a record)"
        except ValueError as exc:  # an unknown camera model, an image name without its end
            return f"{name} is garbled ({exc})"
        if off != len(data):
            return f"{name} has {len(data) - off} bytes after its {count} records"
        return None

    def camera(data: bytes, off: int) -> int:
        (model,) = struct.unpack_from("<i", data, off + 4)
        if not 0 <= model < len(_CAMERA_PARAMS):
            raise ValueError(f"unknown camera model id {model}")
        return off + 24 + 8 * _CAMERA_PARAMS[model]

    def image(data: bytes, off: int) -> int:
        end = data.index(b"\0", off + 64)  # id, pose (7 doubles), camera id, then the name
        (num,) = struct.unpack_from("<Q", data, end + 1)
        return end + 9 + 24 * num  # x, y (doubles), point3D id (uint64) per 2D point

    def point(data: bytes, off: int) -> int:
        (length,) = struct.unpack_from("<Q", data, off + 43)  # id, xyz, rgb, error
        return off + 51 + 8 * length  # image id, 2D point index (uint32 each) per element

    for name, record in (("cameras.bin", camera), ("images.bin", image), ("points3D.bin", point)):
        problem = walk(name, record)
        if problem:
            return problem
    for name, smallest in (("rigs.bin", 16), ("frames.bin", 68)):
        path = sparse_dir / name
        if path.is_file():
            data = path.read_bytes()
            if len(data) < 8 or struct.unpack_from("<Q", data)[0] * smallest > len(data) - 8:
                return f"{name} is truncated or garbled"
    return None


def _rescaled_camera_params(camera: Any, sx: float, sy: float) -> tuple[str, list[float]]:
    """A COLMAP camera's model and params at an image scaled by (sx, sy).

    In COLMAP's pixel convention (centres at c + 0.5) rescaling multiplies x coordinates by sx
    and y by sy. Pinhole models become PINHOLE (fx, fy, cx, cy); radial ones OPENCV, whose
    distortion acts on normalised coordinates and so keeps its coefficients.
    """
    name = camera.model.name
    p = [float(x) for x in camera.params]
    if name == "SIMPLE_PINHOLE":  # f, cx, cy
        f, cx, cy = p
        return "PINHOLE", [f * sx, f * sy, cx * sx, cy * sy]
    if name == "PINHOLE":  # fx, fy, cx, cy
        fx, fy, cx, cy = p
        return "PINHOLE", [fx * sx, fy * sy, cx * sx, cy * sy]
    if name in ("SIMPLE_RADIAL", "RADIAL"):  # f, cx, cy, k1 (, k2)
        f, cx, cy, *k = p
        k1, k2 = (k + [0.0])[:2]
        return "OPENCV", [f * sx, f * sy, cx * sx, cy * sy, k1, k2, 0.0, 0.0]
    if name == "OPENCV":  # fx, fy, cx, cy, k1, k2, p1, p2
        fx, fy, cx, cy, *dist = p
        return "OPENCV", [fx * sx, fy * sy, cx * sx, cy * sy, *dist]
    raise ValueError(f"camera model {name} is not supported by the export")


def rescale_reconstruction(rec: Any, hw: tuple[int, int]) -> None:
    """Rescale every camera of a pycolmap Reconstruction and the 2D points of its images to an
    image size ``hw`` (H, W), in place (see :func:`_rescaled_camera_params`)."""
    import pycolmap

    h, w = int(hw[0]), int(hw[1])
    factors = {}
    for cid, camera in rec.cameras.items():
        sx, sy = w / camera.width, h / camera.height
        model, params = _rescaled_camera_params(camera, sx, sy)
        camera.model = getattr(pycolmap.CameraModelId, model)
        camera.params = params
        camera.width, camera.height = w, h
        factors[cid] = np.array([sx, sy])
    for image in rec.images.values():
        scale = factors[image.camera_id]
        for point in image.points2D:
            point.xy = np.asarray(point.xy) * scale


def write_colmap_text(
    sparse_dir: str | os.PathLike,
    cameras_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    scene: str | None = None,
    stage: str = "export_colmap",
) -> dict[str, Any]:
    """Write the COLMAP model of ``sparse_dir`` (binary, at the SfM size) as text in
    ``out_dir``, rescaled to the training size of ``cameras.npz`` (module docstring).

    Args:
        sparse_dir: ``sfm/sparse/0`` of rule ``sfm``.
        cameras_path: ``cameras.npz`` of the same run (training size ``hw`` and ``K``).
        out_dir: the text model's folder (replaced atomically).

    Returns:
        a summary: images, points, camera model, size, the frames not in the model.

    Raises:
        StageError: the model is missing or unreadable, or does not match ``cameras.npz``
            (another SfM run); each says which folder to delete.
    """
    sparse_dir, out_dir = Path(sparse_dir), Path(out_dir)
    redo = (
        f"delete {sparse_dir.parent.parent} and {cameras_path} and rerun: rule 'sfm' makes "
        "them again (Snakemake reruns what depends on them)"
    )
    cams = io.read_cameras(cameras_path)
    missing = [n for n in COLMAP_BINARY_FILES if not (sparse_dir / n).is_file()]
    if missing:
        raise StageError(
            scene, stage, f"the COLMAP model {sparse_dir} lacks {', '.join(missing)}", redo
        )
    problem = colmap_binary_problem(sparse_dir)
    if problem:
        raise StageError(scene, stage, f"the COLMAP model {sparse_dir}: {problem}", redo)
    import pycolmap  # only here: no PNG is written after it in this process

    try:
        rec = pycolmap.Reconstruction(str(sparse_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError on a bad file
        raise StageError(
            scene, stage, f"cannot read the COLMAP model {sparse_dir}: {exc}", redo
        ) from None
    names = [str(n) for n in cams["names"]]
    by_name = {img.name: img for img in rec.images.values() if img.has_pose}
    in_model = np.array([n in by_name for n in names])
    if rec.num_cameras() < 1 or not np.array_equal(in_model, cams["registered"]):
        raise StageError(
            scene,
            stage,
            f"the COLMAP model {sparse_dir} does not match {cameras_path} (its registered "
            "frames differ): they come from different SfM runs",
            redo,
        )
    hw = (int(cams["hw"][0]), int(cams["hw"][1]))
    rescale_reconstruction(rec, hw)
    camera = next(iter(rec.cameras.values()))
    K = cams["K"]
    # the training K of cameras.npz, in COLMAP's pixel convention
    expected = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]
    if not np.allclose(list(camera.params)[:4], expected, rtol=1e-6, atol=1e-6):
        raise StageError(
            scene,
            stage,
            f"the camera of {sparse_dir} ({list(camera.params)[:4]}) does not match K of "
            f"{cameras_path} ({expected}): they come from different SfM runs",
            redo,
        )
    with io.atomic_dir(out_dir) as tmp:
        rec.write_text(str(tmp))
    left_out = [n for n, r in zip(names, in_model, strict=True) if not r]
    summary = {
        "images": int(rec.num_reg_images()),
        "points3D": int(rec.num_points3D()),
        "camera_model": camera.model.name,
        "size": [hw[1], hw[0]],
        "not_registered": left_out,
    }
    log.info("export: COLMAP text model %s: %s", out_dir, summary)
    if left_out:
        log.info(
            "export: %d frame(s) with interpolated poses are not in the COLMAP model: %s",
            len(left_out),
            ", ".join(left_out[:20]),
        )
    return summary


# --------------------------------------------------------------------------- nerfstudio


def nerfstudio_transforms(
    cams: dict[str, np.ndarray],
    frame_files: list[str],
    mask_files: list[str] | None = None,
    depth_files: list[str] | None = None,
    ply_file: str | None = None,
    depth_scale: float | None = None,
) -> dict[str, Any]:
    """nerfstudio's ``transforms.json`` content for the cameras of ``cameras.npz``.

    Args:
        cams: :func:`nsff_core.model.io.read_cameras` (c2w OpenCV axes, K at the training size).
        frame_files, mask_files, depth_files: per frame, paths relative to the folder of the
            json (nerfstudio reads them relative to it).
        ply_file: the point cloud, relative to that folder.
        depth_scale: SfM units per depth-PNG step (``depth_unit_scale_factor``).

    Returns:
        the dict (module docstring): shared intrinsics with ``cx, cy = K[:2, 2] + 0.5``
        (nerfstudio casts rays through ``pixel + 0.5``), frames with 4x4 camera-to-world
        matrices in OpenGL axes.
    """
    n = len(cams["names"])
    for what, files in (("frame", frame_files), ("mask", mask_files), ("depth", depth_files)):
        if files is not None and len(files) != n:
            raise ValueError(f"{len(files)} {what} files for {n} cameras")
    K = np.asarray(cams["K"], np.float64)
    h, w = (int(v) for v in cams["hw"])
    c2w_gl = opencv_to_opengl(cams["c2w"])
    out: dict[str, Any] = {
        "camera_model": "PINHOLE",
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2] + 0.5),
        "cy": float(K[1, 2] + 0.5),
        "w": w,
        "h": h,
    }
    if ply_file is not None:
        out["ply_file_path"] = ply_file
    if depth_scale is not None:
        out["depth_unit_scale_factor"] = float(depth_scale)
    frames = []
    for i in range(n):
        frame: dict[str, Any] = {
            "file_path": frame_files[i],
            "transform_matrix": c2w_gl[i].tolist(),
        }
        if mask_files is not None:
            frame["mask_path"] = mask_files[i]
        if depth_files is not None:
            frame["depth_file_path"] = depth_files[i]
        frame["time"] = i / (n - 1) if n > 1 else 0.0
        frame["registered"] = bool(cams["registered"][i])
        frames.append(frame)
    out["frames"] = frames
    return out


def nerfstudio_mask(dynamic: np.ndarray) -> np.ndarray:
    """Our mask (bool (H, W), True = dynamic) -> a nerfstudio mask, uint8 0 = ignore, 255 = use."""
    return np.where(dynamic, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- model depth


def ndc_depth_to_points(
    t: Any, K: np.ndarray, K_ndc: np.ndarray, c2w_nsff: np.ndarray, hw: tuple[int, int], norm: Any
) -> np.ndarray:
    """SfM-world points (H*W, 3) of one rendered image's NDC ray parameters.

    Args:
        t: (H*W,) expected NDC ray parameter per pixel, row-major (RenderImage depth).
        K: (3, 3) intrinsics of the rendered camera; K_ndc: the training K (NDC warp).
        c2w_nsff: (4, 4) the camera in the NSFF world and axes.
        norm: the checkpoint's :class:`~nsff_core.model.rays.SceneNormalization`.

    Returns:
        float64 points; at t -> 1 (NDC infinity) they are very far (not inf).
    """
    import torch

    from nsff_core.model.rays import get_rays, ndc_to_world, rays_to_ndc

    c2w = torch.as_tensor(np.asarray(c2w_nsff), dtype=torch.float64)
    o, d = get_rays(K, c2w, hw)
    o_ndc, d_ndc = rays_to_ndc(o, d, np.asarray(K_ndc, np.float64))
    t = torch.as_tensor(np.asarray(t), dtype=torch.float64).reshape(-1, 1)
    x_nsff = ndc_to_world(o_ndc + t * d_ndc, np.asarray(K_ndc, np.float64))
    return norm.unapply_points(x_nsff.numpy())


@contextlib.contextmanager
def _outputs(paths: dict[str, Path], folders: tuple[str, ...]):
    """Scratch names for every output, renamed into place on success in reverse order of
    ``paths`` (so its first entry comes last); earlier outputs are removed first."""
    for p in paths.values():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        yield {
            k: stack.enter_context(io.atomic_dir(p) if k in folders else io.atomic_file(p))
            for k, p in paths.items()
        }


def export_scene(
    ckpt: str | os.PathLike,
    cameras_path: str | os.PathLike,
    frames_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    outputs: dict[str, str | os.PathLike],
    chunk: int = RenderSplitConfig.chunk,
    scene: str | None = None,
    stride: int = STRIDE,
    max_points: int = MAX_POINTS,
    seed: int = 0,
    stage: str = "export",
) -> dict[str, Any]:
    """Render the trained model at every frame and write the nerfstudio export, the depth PNGs
    and the static point cloud (module docstring).

    Args:
        ckpt: ``train/last.ckpt``; cameras_path: ``cameras.npz``.
        frames_dir, masks_dir: ``frames/`` and ``masks/`` (255 = dynamic) of the scene.
        outputs: ``transforms`` (json), ``depth`` (folder), ``depth_scale`` (json), ``masks``
            (folder), ``points`` (PLY). The json's paths are relative to its folder.
        chunk: rays per field call.
        stride, max_points, seed: point-cloud subsampling.

    Returns:
        a summary (frames, points, depth scale, valid depth share, seconds).

    Raises:
        StageError: a missing frame or mask, or a checkpoint of another scene; a corrupt
            ``cameras.npz``, frame, mask or checkpoint raises CorruptFileError (run_stage
            names the scene and rule).
    """
    import torch

    from nsff_core.holdout import model_times, source_frame_count
    from nsff_core.model.interp import render_view

    from .render_split import load_system, to_uint8

    t_start = time.perf_counter()
    targets = {
        k: Path(outputs[k]) for k in ("transforms", "depth", "depth_scale", "masks", "points")
    }
    root = targets["transforms"].parent
    cams = io.read_cameras(cameras_path)
    names = [str(n) for n in cams["names"]]
    n = len(names)
    h, w = (int(v) for v in cams["hw"])
    frames_dir, masks_dir = Path(frames_dir), Path(masks_dir)
    for folder, rule in ((frames_dir, "frames"), (masks_dir, "masks")):
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise StageError(
                scene,
                stage,
                f"{len(missing)} of the {n} frames of cameras.npz have no file in {folder} "
                f"(e.g. {missing[0]})",
                f"delete {folder} and rerun: rule '{rule}' writes it again",
            )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    system = load_system(ckpt, device)
    meta = system.meta
    frame_ids = meta.frame_ids
    if source_frame_count(frame_ids, meta.num_frames) != n:
        raise StageError(
            scene,
            stage,
            f"the checkpoint {ckpt} has {source_frame_count(frame_ids, meta.num_frames)} "
            f"frames, cameras.npz {n}",
            f"the checkpoint is of another run: delete {ckpt} and rerun (rule 'train')",
        )
    norm = meta.normalization
    if norm is None:
        raise StageError(
            scene,
            stage,
            f"the checkpoint {ckpt} keeps no scene normalization (written before it was)",
            f"delete {ckpt} and rerun (rule 'train')",
        )
    K_ndc = meta.K
    K = np.asarray(cams["K"], np.float64)
    c2w_nsff = norm.apply_c2w(cams["c2w"])
    times = model_times(np.arange(n, dtype=np.float64), frame_ids)
    limit = FAR_FACTOR * float(np.max(cams["far"]))
    scale = limit / DEPTH_PNG_MAX
    rng = np.random.default_rng(seed)
    rel = {k: os.path.relpath(targets[k], root) for k in ("depth", "masks", "points")}
    frames_rel = os.path.relpath(frames_dir, root)

    xyz_parts, rgb_parts, valid_share = [], [], []
    progress = Progress("export: frame", n, log)
    with _outputs(targets, ("depth", "masks")) as tmp:
        for i, name in enumerate(names):
            dynamic = io.read_mask(masks_dir / name)
            if dynamic.shape != (h, w):
                raise StageError(
                    scene,
                    stage,
                    f"mask {masks_dir / name} is {dynamic.shape[1]}x{dynamic.shape[0]}, the "
                    f"frames {w}x{h}",
                    f"delete {masks_dir} and rerun: rule 'masks' writes it again",
                )
            img = render_view(system, c2w_nsff[i], K, (h, w), float(times[i]), chunk)
            # composite depth (what the frame shows) and the static field alone
            pts = ndc_depth_to_points(img.depth.numpy(), K, K_ndc, c2w_nsff[i], (h, w), norm)
            z = cam.world_to_camera(cams["c2w"][i], pts)[:, 2].reshape(h, w)
            v = depth_to_png(np.where(z <= limit, z, np.nan), scale)
            valid_share.append(float((v > 0).mean()))
            write_depth_png(tmp["depth"] / name, v)
            io.write_image(tmp["masks"] / name, nerfstudio_mask(dynamic))

            pts_s = ndc_depth_to_points(
                img.static_depth.numpy(), K, K_ndc, c2w_nsff[i], (h, w), norm
            )
            z_s = cam.world_to_camera(cams["c2w"][i], pts_s)[:, 2].reshape(h, w)
            keep = np.zeros((h, w), bool)
            # a different pixel offset per frame, so the frames fill each other's gaps
            off = i % stride
            keep[off::stride, off::stride] = True
            keep &= ~dynamic & np.isfinite(z_s) & (z_s > 0) & (z_s <= limit)
            flat = keep.reshape(-1)
            xyz_parts.append(pts_s[flat].astype(np.float32))
            rgb_parts.append(to_uint8(img.static_rgb.numpy().reshape(-1, 3)[flat]))
            progress.update(i + 1)  # the first frame, then at least every 30 s, and the last

        xyz = np.concatenate(xyz_parts) if xyz_parts else np.zeros((0, 3), np.float32)
        rgb = np.concatenate(rgb_parts) if rgb_parts else np.zeros((0, 3), np.uint8)
        if len(xyz) > max_points:
            pick = np.sort(rng.choice(len(xyz), size=max_points, replace=False))
            xyz, rgb = xyz[pick], rgb[pick]
        write_ply(tmp["points"], xyz, rgb)
        depth_info = {
            "scale": scale,
            "unit": "SfM units (the units of cameras.npz and the COLMAP model)",
            "formula": "depth = value * scale; value 0 = no depth",
            "kind": "camera z (along the optical axis), not the distance along the ray",
            "source": "the trained model: expected depth of the composite render at the "
            "frame's pose and time",
            "max_depth": limit,
            "valid_fraction_mean": float(np.mean(valid_share)) if valid_share else 0.0,
        }
        tmp["depth_scale"].write_text(json.dumps(depth_info, indent=2) + "\n")
        transforms = nerfstudio_transforms(
            cams,
            [f"{frames_rel}/{name}" for name in names],
            [f"{rel['masks']}/{name}" for name in names],
            [f"{rel['depth']}/{name}" for name in names],
            ply_file=rel["points"],
            depth_scale=scale,
        )
        tmp["transforms"].write_text(json.dumps(transforms, indent=2) + "\n")
    summary = {
        "frames": n,
        "points": int(len(xyz)),
        "depth_scale": scale,
        "valid_depth_fraction": depth_info["valid_fraction_mean"],
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    log.info("export: done %s", summary)
    return summary
