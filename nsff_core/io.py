"""Reading and writing the workflow's file formats (DESIGN.md section 3).

- frames: ``frames/{i:05d}.png``, 8-bit RGB; lexical order is time order.
- optical flow: Middlebury ``.flo`` (float32 magic 202021.25, int32 width, int32 height, then
  row-major interleaved (u, v) float32 in pixels, little-endian).
- masks: 8-bit single-channel PNG, 255 = dynamic (or = consistent, for flow_ok).
- disparity: ``.npy`` float32 (H, W) relative inverse depth.
- ``cameras.npz``: ``c2w`` (N,4,4) OpenCV axes (x right, y down, z forward), ``K`` (3,3) at
  training resolution, ``hw`` (2,), ``near``/``far`` (N,), ``names`` (N,), ``registered`` (N,).
- ``poses_bounds.npy``: LLFF convention (N, 17), see :func:`write_poses_bounds`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FLO_MAGIC = np.float32(202021.25)


# --------------------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    A failed stage therefore never leaves a directory that looks complete. An existing ``path``
    is replaced (it is an output of ours, which Snakemake would delete before the job anyway),
    and the scratch directories of earlier runs that were killed (SIGKILL skips the clean-up)
    are removed once this one succeeds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path (same folder, same suffix) renamed to ``path`` on success.

    Scratch files of earlier runs that were killed are removed once this one succeeds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- images


def frame_name(i: int, ext: str = ".png") -> str:
    """File name of frame ``i`` (zero-padded to five digits)."""
    return f"{i:05d}{ext}"


def list_frames(frames_dir: str | os.PathLike) -> list[Path]:
    """PNG frames of a ``frames/`` folder in lexical (= time) order."""
    return sorted(Path(frames_dir).glob("*.png"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image as RGB (H, W, 3) uint8. Raises ``ValueError`` if it does not decode."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"cannot decode image {path}")
    return img[..., ::-1].copy()


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 image; the format follows the suffix."""
    import cv2

    img = rgb[..., ::-1] if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(Path(path).suffix or ".png", np.ascontiguousarray(img))
    if not ok:
        raise OSError(f"cannot encode image {path}")
    buf.tofile(str(path))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit mask PNG as bool (H, W): True where the pixel value is >= 128."""
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError(f"cannot decode mask {path}")
    return m >= 128


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a bool (H, W) mask as an 8-bit PNG (True = 255)."""
    write_image(path, np.where(mask, 255, 0).astype(np.uint8))


# --------------------------------------------------------------------------- flow, disparity


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Write a (H, W, 2) flow field in pixels as Middlebury ``.flo``."""
    flow = np.asarray(flow, dtype="<f4")
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    with open(path, "wb") as f:
        np.array([FLO_MAGIC], dtype="<f4").tofile(f)
        np.array([w, h], dtype="<i4").tofile(f)
        flow.tofile(f)


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as (H, W, 2) float32."""
    with open(path, "rb") as f:
        magic = np.fromfile(f, dtype="<f4", count=1)
        if magic.size != 1 or magic[0] != FLO_MAGIC:
            raise ValueError(f"{path} is not a .flo file (bad magic)")
        w, h = (int(v) for v in np.fromfile(f, dtype="<i4", count=2))
        data = np.fromfile(f, dtype="<f4", count=h * w * 2)
    if data.size != h * w * 2:
        raise ValueError(f"{path} is truncated: expected {h}x{w}x2 values")
    return data.reshape(h, w, 2).astype(np.float32)


def write_disparity(path: str | os.PathLike, disp: np.ndarray) -> None:
    """Write a (H, W) relative disparity map as float32 ``.npy``."""
    np.save(path, np.asarray(disp, dtype=np.float32))


def read_disparity(path: str | os.PathLike) -> np.ndarray:
    return np.load(path).astype(np.float32)


# --------------------------------------------------------------------------- cameras


def write_cameras(
    path: str | os.PathLike,
    c2w: np.ndarray,
    K: np.ndarray,
    hw: tuple[int, int],
    near: np.ndarray,
    far: np.ndarray,
    names: list[str],
    registered: np.ndarray | None = None,
) -> None:
    """Write ``cameras.npz`` (DESIGN.md section 3). ``c2w`` is (N,4,4) in OpenCV axes."""
    n = len(names)
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (n, 4, 4):
        raise ValueError(f"c2w must be ({n},4,4), got {c2w.shape}")
    np.savez(
        path,
        c2w=c2w,
        K=np.asarray(K, dtype=np.float64),
        hw=np.asarray(hw, dtype=np.int64),
        near=np.asarray(near, dtype=np.float64),
        far=np.asarray(far, dtype=np.float64),
        names=np.asarray(names),
        registered=np.ones(n, bool) if registered is None else np.asarray(registered, bool),
    )


def read_cameras(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``cameras.npz`` into a dict of arrays (keys as in :func:`write_cameras`)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_poses_bounds(
    path: str | os.PathLike,
    c2w: np.ndarray,
    K: np.ndarray,
    hw: tuple[int, int],
    near: np.ndarray,
    far: np.ndarray,
) -> None:
    """Write LLFF ``poses_bounds.npy``: per frame a flattened 3x5 matrix and near, far.

    The 3x5 matrix is ``[R | t | (h, w, f)]`` with rotation columns in LLFF order
    (down, right, backwards), i.e. OpenCV columns (x, y, z) mapped to (y, x, -z).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    R_llff = np.stack([R[..., 1], R[..., 0], -R[..., 2]], axis=-1)
    h, w = hw
    f = 0.5 * (K[0, 0] + K[1, 1])
    hwf = np.broadcast_to(np.array([h, w, f], dtype=np.float64)[:, None], (len(c2w), 3, 1))
    mats = np.concatenate([R_llff, t[..., None], hwf], axis=-1)  # (N, 3, 5)
    out = np.concatenate([mats.reshape(len(c2w), 15), np.stack([near, far], -1)], axis=-1)
    np.save(path, out.astype(np.float64))


# --------------------------------------------------------------------------- videos


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write RGB frames (N, H, W, 3) uint8 as a video; the suffix picks the format.

    ``.mp4``: H.264 (yuv420p, crf 5, no resizing; H and W must be even). ``.gif``: an animated
    GIF (looping).
    """
    frames = np.asarray(frames)
    if Path(path).suffix.lower() == ".gif":
        import imageio.v3 as iio

        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        return
    import imageio_ffmpeg

    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs an even frame size, got {w}x{h}")
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=9,  # crf 5: visually lossless
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
