"""Reading and writing the workflow's file formats (where each file lives: :mod:`.layout`).

- frames: ``frames/{i:05d}.png``, 8-bit RGB; lexical order is time order.
- optical flow: Middlebury ``.flo`` (float32 magic 202021.25, int32 width, int32 height, then
  row-major interleaved (u, v) float32 in pixels, little-endian).
- masks: 8-bit single-channel PNG, 255 = dynamic (or = consistent, for flow_ok).
- disparity: ``.npy`` float32 (H, W) relative inverse depth.
- ``cameras.npz``: ``c2w`` (N,4,4) OpenCV axes (x right, y down, z forward), ``K`` (3,3) at
  training resolution, ``hw`` (2,), ``near``/``far`` (N,), ``names`` (N,), ``registered`` (N,).
- ``poses_bounds.npy``: LLFF convention (N, 17), see :func:`write_poses_bounds`.

Reading: :func:`read_image` is the one image reader of every stage, for the user's images and
our own PNGs alike (see there for the accepted kinds). The readers of the workflow's own files
raise :class:`~nsff_core.errors.CorruptFileError` naming the file and the rule that writes it
when a file is truncated, garbled or of the wrong shape, so that the rule that reads it stops
with "delete it and rerun" instead of a numpy or zip traceback.

Writing: outputs appear atomically (:func:`atomic_dir`, :func:`atomic_file`) with the modes a
plain ``open``/``mkdir`` would give them under the process umask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nsff_core.errors import CorruptFileError

log = logging.getLogger(__name__)

FLO_MAGIC = np.float32(202021.25)


def _corrupt(path: object, cause: str, made_by: str | None, in_folder: bool) -> CorruptFileError:
    """The error for an unreadable ``path``; ``in_folder``: one file of a folder output."""
    if made_by and in_folder:
        return CorruptFileError(path, cause, made_by, output=Path(path).parent)
    return CorruptFileError(path, cause, made_by)


def _reason(err: BaseException) -> str:
    """A short cause from a decoder's exception (its first line, with its type)."""
    if "pickled" in str(err):
        # numpy's words for a file that starts with neither the .npy nor the zip signature
        return "not an .npy/.npz file (unknown or garbled header)"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


# --------------------------------------------------------------------------- file modes


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where the system allows.

    Linux (4.7+) reports it in ``/proc/self/status``. Elsewhere it is read the classic way, by
    setting a temporary umask and restoring it; the umask is process-wide, so a file another
    thread creates in that instant gets the temporary ``0o077`` (the safe side: private).
    Read on every call (it is cheap), so a umask set after import is honoured.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_default_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would: 0o666 (files) or 0o777
    (folders) less the umask.

    ``tempfile.mkstemp``/``mkdtemp`` create 0o600/0o700 whatever the umask, which would keep
    other members of a group out of a shared results folder or weights cache. A folder keeps
    its set-group-ID bit (inherited from a setgid parent, as with ``mkdir``), so new files in a
    group folder stay in the group. Best effort: a file system without modes (FAT, some network
    mounts) refuses ``chmod``, which is logged and ignored.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        mode = (0o777 & ~current_umask()) | (st.st_mode & stat.S_ISGID)
    else:
        mode = 0o666 & ~current_umask()
    try:
        os.chmod(path, mode)
    except OSError as err:
        log.debug("cannot set mode %o on %s: %s", mode, path, err)


# --------------------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    A failed stage therefore never leaves a directory that looks complete. An existing ``path``
    is replaced (it is an output of ours, which Snakemake would delete before the job anyway),
    and the scratch directories of earlier runs that were killed (SIGKILL skips the clean-up)
    are removed once this one succeeds. The folder gets the mode of a plain ``mkdir`` (0o777
    less the umask, see :func:`apply_default_mode`) before it is renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    apply_default_mode(tmp)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path (same folder, same suffix) renamed to ``path`` on success.

    The file gets the mode of a plain ``open`` (0o666 less the umask) before it is renamed.

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
    apply_default_mode(tmp)
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


def _decode(path: str | os.PathLike, flags: int, made_by: str | None) -> np.ndarray:
    """Decode an image file with OpenCV (``flags``); unreadable files -> CorruptFileError."""
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise _corrupt(path, _reason(err), made_by, True) from err
    if data.size == 0:
        raise _corrupt(path, "the file is empty", made_by, True)
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as err:  # e.g. more pixels than OpenCV's limit
        raise _corrupt(path, _reason(err), made_by, True) from err
    if img is None:
        raise _corrupt(
            path, "cannot decode image (truncated, corrupt or not an image)", made_by, True
        )
    return img


def _to_rgb8(img: np.ndarray, path: str | os.PathLike, made_by: str | None) -> np.ndarray:
    """An image as decoded by OpenCV (BGR or grey, 8- or 16-bit) to RGB (H, W, 3) uint8.

    16-bit samples map linearly onto 8 bits (0 -> 0, 65535 -> 255, rounded: x * 255 / 65535).
    Other sample types (32-bit float or integer, signed) have no agreed range and are refused
    with a :class:`~nsff_core.errors.CorruptFileError` naming ``path``.
    """
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise _corrupt(
            path,
            f"{img.dtype} samples are not supported (only 8- and 16-bit unsigned integer "
            "images are); convert the image to an 8- or 16-bit PNG or a JPEG",
            made_by,
            True,
        )
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise _corrupt(path, f"unsupported image layout {img.shape}", made_by, True)
    return np.ascontiguousarray(img[..., 2::-1])  # BGR(A) -> RGB, alpha dropped


def read_image(path: str | os.PathLike, made_by: str | None = None) -> np.ndarray:
    """Read an image file as RGB (H, W, 3) uint8: the one image reader of every stage.

    Accepted: anything OpenCV decodes (PNG, JPEG, BMP, TIFF, WebP...) with 8- or 16-bit
    unsigned samples, grey, grey+alpha, RGB, RGBA or palette. The EXIF orientation is applied
    (a portrait photo stored sideways comes out upright, as every viewer shows it), 16-bit
    samples are scaled linearly to 8 bits (65535 -> 255), grey is repeated into the three
    channels and alpha is dropped (not composited: the colour under a transparent pixel is
    kept).

    OpenCV decodes rather than Pillow/imageio: one ``imdecode`` call with ``IMREAD_ANYDEPTH |
    IMREAD_ANYCOLOR`` keeps 16-bit samples (Pillow reads 16-bit colour PNGs as 8-bit and clips
    16-bit grey at 255 when converting), applies the EXIF orientation and drops alpha; and it is
    the library that writes our frames, so the frames rule and the pretrained backends (which
    re-read the source) see the same pixels and sizes.

    Args:
        path: the image file.
        made_by: the workflow rule that writes the file (``"frames"`` for ``frames/*.png``),
            None for a file the user gave us; used by the error's advice.

    Raises:
        CorruptFileError (a ValueError): the file is missing, empty, does not decode, or has
            32-bit / floating-point / signed samples.
    """
    import cv2

    img = _decode(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR, made_by)
    return _to_rgb8(img, path, made_by)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 image; the format follows the suffix."""
    import cv2

    img = rgb[..., ::-1] if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(Path(path).suffix or ".png", np.ascontiguousarray(img))
    if not ok:
        raise OSError(f"cannot encode image {path}")
    buf.tofile(str(path))


def read_mask(path: str | os.PathLike, made_by: str | None = "masks") -> np.ndarray:
    """Read an 8-bit mask PNG as bool (H, W): True where the pixel value is >= 128.

    ``made_by``: the rule that writes the mask (``"masks"``; ``"flow"`` for ``flow_ok/``).
    Raises CorruptFileError if the file does not decode as an 8-bit image.
    """
    import cv2

    m = _decode(path, cv2.IMREAD_GRAYSCALE, made_by)
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


def read_flo(path: str | os.PathLike, made_by: str | None = "flow") -> np.ndarray:
    """Read a Middlebury ``.flo`` file as (H, W, 2) float32 (pixels).

    Raises:
        CorruptFileError (a ValueError) naming ``path`` and the rule ``made_by``: not a
            ``.flo`` file (bad magic), a bad size in the header, a file shorter or longer than
            the header says, or non-finite values.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(12)
            if len(header) < 12 or np.frombuffer(header[:4], "<f4")[0] != FLO_MAGIC:
                raise _corrupt(path, "not a .flo file (bad magic)", made_by, True)
            w, h = (int(v) for v in np.frombuffer(header[4:12], "<i4"))
            if w <= 0 or h <= 0:
                raise _corrupt(path, f"bad size {w}x{h} in the header", made_by, True)
            # the size check comes first: a garbled header can claim terabytes
            size, expected = os.fstat(f.fileno()).st_size, 12 + 8 * w * h
            if size != expected:
                what = "truncated" if size < expected else "longer than its header says"
                raise _corrupt(
                    path, f"{what}: {size} bytes, a {w}x{h} flow has {expected}", made_by, True
                )
            data = np.fromfile(f, dtype="<f4", count=h * w * 2)
    except OSError as err:
        raise _corrupt(path, _reason(err), made_by, True) from err
    if data.size != h * w * 2:  # the file shrank while being read
        raise _corrupt(path, f"truncated: expected {h}x{w}x2 values", made_by, True)
    flow = data.reshape(h, w, 2).astype(np.float32)
    _require_finite(path, flow, made_by, True)
    return flow


def _require_finite(path, array: np.ndarray, made_by: str | None, in_folder: bool) -> None:
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise _corrupt(path, f"{bad} non-finite value(s) (NaN or inf)", made_by, in_folder)


def _load_npy(path, made_by: str | None, in_folder: bool) -> np.ndarray:
    """``np.load`` of an ``.npy`` file (no pickles); failures -> CorruptFileError."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        cause = f"not a readable .npy array ({_reason(err)})"
        raise _corrupt(path, cause, made_by, in_folder) from err
    if not isinstance(arr, np.ndarray):
        raise _corrupt(path, "not an .npy array", made_by, in_folder)
    return arr


def write_disparity(path: str | os.PathLike, disp: np.ndarray) -> None:
    """Write a (H, W) relative disparity map as float32 ``.npy``."""
    np.save(path, np.asarray(disp, dtype=np.float32))


def read_disparity(path: str | os.PathLike, made_by: str | None = "depth") -> np.ndarray:
    """Read a (H, W) disparity ``.npy`` as float32.

    Raises CorruptFileError naming ``path`` and the rule ``made_by`` for a file that does not
    load, is not a 2-D real array, or holds non-finite values.
    """
    arr = _load_npy(path, made_by, True)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu" or 0 in arr.shape:
        raise _corrupt(
            path, f"expected a (H, W) float array, found {arr.dtype} {arr.shape}", made_by, True
        )
    disp = arr.astype(np.float32)
    _require_finite(path, disp, made_by, True)
    return disp


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
    """Write ``cameras.npz`` (see the module docstring). ``c2w`` is (N,4,4) in OpenCV axes."""
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


def read_npz(path: str | os.PathLike, made_by: str | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive (no pickles), decompressed and checked.

    Raises:
        CorruptFileError (a ValueError) naming ``path`` and the rule ``made_by``: the file is
            missing, truncated, garbled (a bad zip directory or a member whose CRC fails) or a
            plain ``.npy`` array rather than an archive.
    """
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        cause = f"not a readable .npz archive ({_reason(err)})"
        raise _corrupt(path, cause, made_by, False) from err
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _corrupt(path, "an .npy array, not an .npz archive", made_by, False)
    try:
        with z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as err:
        raise _corrupt(path, f"a damaged .npz member ({_reason(err)})", made_by, False) from err


#: keys of ``cameras.npz`` and their checks: (dtype kinds, shape with N for the frame count)
_CAMERA_KEYS: dict[str, tuple[str, tuple]] = {
    "c2w": ("f", ("N", 4, 4)),
    "K": ("f", (3, 3)),
    "hw": ("iu", (2,)),
    "near": ("f", ("N",)),
    "far": ("f", ("N",)),
    "names": ("U", ("N",)),
    "registered": ("b", ("N",)),
}


def read_cameras(path: str | os.PathLike, made_by: str | None = "sfm") -> dict[str, np.ndarray]:
    """Read ``cameras.npz`` into a dict of arrays (keys as in :func:`write_cameras`).

    Raises:
        CorruptFileError (a ValueError) naming ``path`` and the rule ``made_by``: not a
            readable ``.npz`` (truncated, garbled), a missing key, an array of the wrong type
            or shape, non-finite camera values or a non-positive image size.
    """
    cams = read_npz(path, made_by)
    missing = [k for k in _CAMERA_KEYS if k not in cams]
    if missing:
        raise _corrupt(path, f"missing array(s) {', '.join(missing)}", made_by, False)
    n = len(cams["c2w"]) if cams["c2w"].ndim else -1
    for key, (kinds, shape) in _CAMERA_KEYS.items():
        arr = cams[key]
        want = tuple(n if d == "N" else d for d in shape)
        if arr.dtype.kind not in kinds or arr.shape != want:
            raise _corrupt(
                path,
                f"'{key}' is {arr.dtype} {arr.shape}, expected shape {want}",
                made_by,
                False,
            )
    for key in ("c2w", "K", "near", "far"):
        if not np.isfinite(cams[key]).all():
            raise _corrupt(path, f"'{key}' holds non-finite values (NaN or inf)", made_by, False)
    if (cams["hw"] <= 0).any():
        raise _corrupt(path, f"bad image size hw={cams['hw'].tolist()}", made_by, False)
    return cams


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


def read_poses_bounds(path: str | os.PathLike, made_by: str | None = "sfm") -> np.ndarray:
    """Read LLFF ``poses_bounds.npy`` as (N, 17) float64 (see :func:`write_poses_bounds`).

    Raises CorruptFileError naming ``path`` and ``made_by`` for a file that does not load, is
    not (N, 17) real numbers, or holds non-finite values.
    """
    arr = _load_npy(path, made_by, False)
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.dtype.kind not in "fiu":
        raise _corrupt(
            path, f"expected (N, 17) numbers, found {arr.dtype} {arr.shape}", made_by, False
        )
    arr = arr.astype(np.float64)
    _require_finite(path, arr, made_by, False)
    return arr


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
