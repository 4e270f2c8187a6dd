"""The ``frames`` stage: a video or an image folder to ``frames/{i:05d}.png`` and ``frames.json``.

Selection happens in source frames, in this order:

1. ``[start:end:stride]`` of the source frames (``end`` exclusive, ``None`` = to the end);
2. if ``max_frames`` is set and more frames remain, ``max_frames`` of them evenly spread over
   the selection (``np.linspace`` over their positions, rounded; the first and last are kept);
3. each kept frame is resized to the training resolution (``cv2.INTER_AREA`` when shrinking,
   ``cv2.INTER_CUBIC`` when enlarging) and written as 8-bit RGB PNG ``00000.png``, ``00001.png``...

Sizes: source frames and training frames must be at least ``config.MIN_FRAME_SIDE`` pixels on
each side (a derived side, e.g. the height 6 that ``width: 512`` gives a 4000x40 source, is
checked too); enlarging small sources is allowed with a warning.

Images of a folder are read with :func:`nsff_core.model.io.read_image` (EXIF orientation applied,
16-bit scaled to 8-bit, grey and alpha handled), here and in :func:`read_source_frames`, so the
pretrained backends see the frames the frames rule saw.

Worked example: 12 source frames, ``start=1, end=None, stride=2`` selects ``1, 3, 5, 7, 9, 11``;
``max_frames=4`` then keeps positions ``round(linspace(0, 5, 4)) = 0, 2, 3, 5``, i.e. source
frames ``1, 5, 7, 11``.

Videos are streamed through imageio's FFMPEG plugin (imageio-ffmpeg), one frame in memory at a
time. A video's frame count is not trusted up front: decoding stops after the last frame needed,
and when the video ends earlier the selection is recomputed from the number of frames actually
decoded (with ``max_frames``, that costs a second pass).

The outputs are written atomically (:func:`nsff_core.model.io.atomic_dir`,
:func:`~nsff_core.model.io.atomic_file`), and outputs of an earlier run are deleted first: after any
failure neither ``frames/`` nor ``frames.json`` exists.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nsff_core.model.io import atomic_dir, atomic_file, frame_name, read_image, write_image

from ..config import MAX_FRAME_SIDE, MIN_FRAME_SIDE, FramesConfig, to_dict
from ..errors import CorruptFileError, StageError
from .nets.images import SOURCE_MAX_SIZE, cap_size

logger = logging.getLogger(__name__)

STAGE = "frames"

#: suffixes (lower case) of the files an image folder contributes; everything else is ignored
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- public entry point


def extract_frames(
    source: str | Path,
    frames_dir: str | Path,
    frames_json: str | Path,
    cfg: FramesConfig,
    scene: str | None = None,
) -> dict[str, Any]:
    """Extract, select and resize the frames of a video or image folder.

    Args:
        source: a video file (any container/codec ffmpeg decodes) or a folder of images
            (``IMAGE_SUFFIXES``, case-insensitive; lexical file-name order = time order; other
            files, sub-folders and hidden files are ignored).
        frames_dir: output folder; receives ``00000.png, 00001.png, ...`` (RGB, 8 bit, (H, W, 3)
            with ``(W, H)`` = ``size`` below). Replaced if it exists.
        frames_json: output JSON file describing the extraction (see Returns).
        cfg: frame range, stride, cap and training resolution.
        scene: scene name for error messages.

    Returns:
        The dict written to ``frames_json``:

        - ``source``: absolute path of the source (str);
        - ``kind``: ``"video"`` or ``"images"``;
        - ``fps``: frames per second of the video (float), ``null`` for an image folder;
        - ``source_size``: ``[w, h]`` of the source frames in pixels;
        - ``size``: ``[w, h]`` of the written frames in pixels;
        - ``scale``: ``[sx, sy]`` = size / source_size (multiply source pixel coordinates by it);
        - ``count``: number of frames written;
        - ``source_indices``: 0-based source frame index of each written frame;
        - ``source_names``: file name of each written frame's image (folders), ``null`` (videos);
        - ``config``: the :class:`FramesConfig` used, as a dict.

    Raises:
        StageError: bad config values, missing or undecodable source, an empty folder, a frame
            range outside the source, fewer than 2 frames selected, an unreadable image,
            images of different sizes, or source or training frames with a side below
            :data:`MIN_FRAME_SIDE`. Nothing is left at ``frames_dir``/``frames_json`` then.
    """
    src = Path(source).expanduser().resolve()
    frames_dir = Path(frames_dir)
    frames_json = Path(frames_json)
    _remove_stale_outputs(src, frames_dir, frames_json, scene)
    _validate_config(cfg, scene)

    if not src.exists():
        raise StageError(
            scene,
            STAGE,
            f"source not found: {src}",
            "check the 'source' column of the scene sheet (a video file or a folder of images; "
            "relative paths are taken from the directory Snakemake runs in)",
        )

    with atomic_dir(frames_dir) as tmp:
        if src.is_dir():
            info = _extract_images(src, tmp, cfg, scene)
        else:
            info = _extract_video(src, tmp, cfg, scene)
        source_size, size = info["source_size"], info["size"]
        record: dict[str, Any] = {
            "source": str(src),
            "kind": info["kind"],
            "fps": info["fps"],
            "source_size": list(source_size),
            "size": list(size),
            "scale": [size[0] / source_size[0], size[1] / source_size[1]],
            "count": len(info["source_indices"]),
            "source_indices": list(info["source_indices"]),
            "source_names": info["source_names"],
            "config": to_dict(cfg),
        }
        # Written inside the frames_dir transaction: a failure here removes the frames as well.
        with atomic_file(frames_json) as tmp_json:
            tmp_json.write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "frames: %d frames %dx%d from %s %s -> %s",
        record["count"],
        size[0],
        size[1],
        record["kind"],
        src,
        frames_dir,
    )
    return record


# --------------------------------------------------------------------------- selection, sizes


def select_indices(num_source: int, cfg: FramesConfig) -> list[int]:
    """Source frame indices kept from a source of ``num_source`` frames (range, stride, cap).

    Example: ``num_source=12, start=1, stride=2, max_frames=4`` -> ``[1, 5, 7, 11]``.
    """
    stop = num_source if cfg.end is None else min(cfg.end, num_source)
    selected = list(range(cfg.start, stop, cfg.stride))
    if cfg.max_frames is not None and len(selected) > cfg.max_frames:
        positions = np.unique(np.round(np.linspace(0, len(selected) - 1, cfg.max_frames)))
        selected = [selected[int(p)] for p in positions]
    return selected


def output_size(source_wh: tuple[int, int], cfg: FramesConfig) -> tuple[int, int]:
    """Training resolution ``(w, h)`` in pixels for source frames of size ``source_wh = (w, h)``.

    With one side given, the other follows the aspect ratio, rounded to the nearest even number
    (at least 2): a 1920x1080 source with ``width=512`` gives 512x288.
    """
    w0, h0 = source_wh
    if cfg.width is not None and cfg.height is not None:
        return int(cfg.width), int(cfg.height)
    if cfg.width is not None:
        return int(cfg.width), _round_even(h0 * cfg.width / w0)
    if cfg.height is not None:
        return _round_even(w0 * cfg.height / h0), int(cfg.height)
    return w0, h0


def _round_even(x: float) -> int:
    return max(2, 2 * math.floor(x / 2 + 0.5))


def check_frame_sizes(
    source_wh: tuple[int, int], size: tuple[int, int], cfg: FramesConfig, scene: str | None
) -> None:
    """Refuse source frames or training frames with a side below
    :data:`~nsff_core.config.MIN_FRAME_SIDE`, training frames with a side above
    :data:`~nsff_core.config.MAX_FRAME_SIDE` (a side derived from the aspect ratio can exceed
    it), and warn when the training size enlarges the source.

    Args:
        source_wh: (w, h) of the source frames in pixels.
        size: (w, h) of the training frames (:func:`output_size`).
    Raises:
        StageError: naming the scene, both sizes and the configured width/height.
    """
    (w0, h0), (w, h) = source_wh, size
    low = MIN_FRAME_SIDE
    if min(w0, h0) < low:
        raise StageError(
            scene,
            STAGE,
            f"the source frames are {w0}x{h0} pixels (width x height); each side must be at "
            f"least {low} px",
            "point the scene's source at the full-size video or images (not thumbnails or "
            "icons): frames this small carry too little detail for flow, SfM and depth",
        )
    if min(w, h) < low:
        where = "(in config.yaml or the scene's width/height columns)"
        if cfg.height is None:
            need = max(low, math.ceil(low * w0 / h0))
            fix = f"set frames.width to at least {need} {where}, or give frames.height too"
        elif cfg.width is None:
            need = max(low, math.ceil(low * h0 / w0))
            fix = f"set frames.height to at least {need} {where}, or give frames.width too"
        else:
            fix = f"set frames.width and frames.height to at least {low} {where}"
        if cfg.width is None or cfg.height is None:
            fix += " (the aspect ratio is then not kept)"
        if max(w0, h0) > 4 * min(w0, h0):
            fix += "; or crop the source to a less elongated frame"

        def yaml(v: int | None) -> str:
            return "null" if v is None else str(v)

        raise StageError(
            scene,
            STAGE,
            f"source frames of {w0}x{h0} with frames.width={yaml(cfg.width)}, frames.height="
            f"{yaml(cfg.height)} give {w}x{h} training frames (width x height); each side must "
            f"be at least {low} px",
            fix,
        )
    if max(w, h) > MAX_FRAME_SIDE:
        raise StageError(
            scene,
            STAGE,
            f"source frames of {w0}x{h0} with frames.width={cfg.width}, frames.height="
            f"{cfg.height} give {w}x{h} training frames (width x height); each side must be at "
            f"most {MAX_FRAME_SIDE} px",
            "give a smaller frames.width or frames.height (in config.yaml or the scene's "
            "width/height columns), or both",
        )
    if w > w0 or h > h0:
        logger.warning(
            "frames: the source frames (%dx%d) are enlarged to %dx%d (bicubic, x%.2f); "
            "enlarging adds no detail, only compute: set frames.width/height at most to the "
            "source size, or both to null to keep it",
            w0,
            h0,
            w,
            h,
            max(w / w0, h / h0),
        )


def resize_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to ``size = (w, h)``: area averaging when shrinking,
    bicubic when enlarging (either side), unchanged when the size already matches."""
    import cv2

    h0, w0 = rgb.shape[:2]
    w, h = size
    if (w, h) == (w0, h0):
        return rgb
    interp = cv2.INTER_AREA if (w <= w0 and h <= h0) else cv2.INTER_CUBIC
    return cv2.resize(rgb, (w, h), interpolation=interp)


def _validate_config(cfg: FramesConfig, scene: str | None) -> None:
    """Raise :class:`StageError` for config values that cannot select or size any frames."""
    hint = "fix the 'frames' section of the config (or the scene's override in the sheet)"

    def integer(name: str, value: Any) -> int:
        try:
            if isinstance(value, bool):
                raise TypeError
            return operator.index(value)
        except TypeError:
            raise StageError(
                scene, STAGE, f"frames.{name} must be an integer, got {value!r}", hint
            ) from None

    def bad(msg: str) -> StageError:
        return StageError(scene, STAGE, msg, hint)

    start = integer("start", cfg.start)
    if start < 0:
        raise bad(f"frames.start must be >= 0, got {start}")
    if integer("stride", cfg.stride) < 1:
        raise bad(f"frames.stride must be >= 1, got {cfg.stride}")
    if cfg.end is not None and integer("end", cfg.end) <= start:
        raise bad(f"frames.end must be greater than frames.start, got start={start} end={cfg.end}")
    if cfg.max_frames is not None and integer("max_frames", cfg.max_frames) < 2:
        raise bad(
            f"frames.max_frames must be >= 2 (NSFF needs a sequence) or null, got {cfg.max_frames}"
        )
    for name in ("width", "height"):
        value = getattr(cfg, name)
        if value is not None and integer(name, value) <= 0:
            raise bad(f"frames.{name} must be a positive number of pixels or null, got {value}")


def _range_text(cfg: FramesConfig) -> str:
    end = "end" if cfg.end is None else cfg.end
    text = f"range start={cfg.start} end={end} stride={cfg.stride}"
    if cfg.max_frames is not None:
        text += f" max_frames={cfg.max_frames}"
    return text


def _check_selection(
    selected: list[int], num_source: int | None, unit: str, cfg: FramesConfig, scene: str | None
) -> None:
    """Raise unless at least 2 frames are selected; ``num_source`` = frames the source has."""
    if not selected and num_source is not None and cfg.start >= num_source:
        raise StageError(
            scene,
            STAGE,
            f"frame range outside the source: frames.start={cfg.start} but the source has only "
            f"{num_source} {unit} (indices 0..{num_source - 1})",
            f"set frames.start below {num_source} (and frames.end at most {num_source})",
        )
    if len(selected) < 2:
        found = "" if num_source is None else f" of the {num_source} {unit} in the source"
        raise StageError(
            scene,
            STAGE,
            f"only {len(selected)} frame(s) selected{found} with {_range_text(cfg)}; "
            "NSFF needs a sequence of at least 2 frames",
            "widen the frame range (frames.start/end), lower frames.stride, or use a source "
            "with more frames",
        )


def _remove_stale_outputs(
    src: Path, frames_dir: Path, frames_json: Path, scene: str | None
) -> None:
    """Delete outputs of an earlier run so that a failure now leaves nothing that looks complete."""
    out = frames_dir.expanduser().resolve()
    if src == out or out in src.parents:
        raise StageError(
            scene,
            STAGE,
            f"the source {src} is (inside) the output folder {out}, which the stage replaces",
            "point the scene's source at the original video or image folder, not at results/",
        )
    frames_json.unlink(missing_ok=True)
    if frames_dir.is_dir() and not frames_dir.is_symlink():
        shutil.rmtree(frames_dir)
    elif frames_dir.exists() or frames_dir.is_symlink():
        frames_dir.unlink()


# --------------------------------------------------------------------------- writing


class _FrameWriter:
    """Writes selected frames as ``{k:05d}.png`` into ``out_dir``, resizing and logging progress."""

    def __init__(
        self,
        out_dir: Path,
        cfg: FramesConfig,
        total: int | None,
        approx: bool = False,
        scene: str | None = None,
    ):
        self.out_dir = out_dir
        self.cfg = cfg
        self.scene = scene
        self.total = total
        self.approx = approx
        self.count = 0
        self.source_size: tuple[int, int] | None = None
        self.size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        """Write one (H, W, 3) uint8 RGB source frame; the first one sets and checks the sizes."""
        if self.size is None:
            self.source_size = (rgb.shape[1], rgb.shape[0])
            self.size = output_size(self.source_size, self.cfg)
            check_frame_sizes(self.source_size, self.size, self.cfg, self.scene)
        write_image(self.out_dir / frame_name(self.count), resize_frame(rgb, self.size))
        self.count += 1
        if self.total:
            step = max(1, math.ceil(self.total / 10))
            if self.count % step == 0 or self.count == self.total:
                total = f"~{self.total}" if self.approx else str(self.total)
                logger.info("frames: %d/%s written", self.count, total)
        elif self.count % 50 == 0:
            logger.info("frames: %d written", self.count)

    def reset(self) -> None:
        """Delete what was written (before a second pass)."""
        for p in self.out_dir.iterdir():
            p.unlink()
        self.count = 0


# --------------------------------------------------------------------------- image folders


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (``IMAGE_SUFFIXES``, any case, not hidden) in lexical order."""
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )


def _extract_images(src: Path, out_dir: Path, cfg: FramesConfig, scene: str | None) -> dict:
    files = list_images(src)
    if not files:
        others = sum(1 for _ in src.iterdir())
        raise StageError(
            scene,
            STAGE,
            f"no images in folder {src} ({others} other entries; looked for "
            f"{', '.join(IMAGE_SUFFIXES)})",
            "put the frames in this folder as image files (or point the source at a video)",
        )
    selected = select_indices(len(files), cfg)
    _check_selection(selected, len(files), "images", cfg, scene)
    logger.info(
        "frames: %d of %d images in %s selected (%s)",
        len(selected),
        len(files),
        src,
        _range_text(cfg),
    )

    writer = _FrameWriter(out_dir, cfg, total=len(selected), scene=scene)
    first: Path | None = None
    for i in selected:
        path = files[i]
        try:
            rgb = read_image(path)
        except CorruptFileError as err:
            raise StageError(
                scene,
                STAGE,
                f"cannot read image {path}: {err.cause}",
                "replace or convert the file, or delete it (or leave it out with frames.start/end)",
            ) from err
        size = (rgb.shape[1], rgb.shape[0])
        if first is None:
            first = path
        elif size != writer.source_size:
            w0, h0 = writer.source_size
            raise StageError(
                scene,
                STAGE,
                f"images of different sizes: {path.name} is {size[0]}x{size[1]} but {first.name} "
                f"(the first selected image) is {w0}x{h0} (width x height) in {src}",
                "all frames of a scene must come from one camera at one resolution; "
                "resize or remove the odd images",
            )
        writer.write(rgb)
    return {
        "kind": "images",
        "fps": None,
        "source_size": writer.source_size,
        "size": writer.size,
        "source_indices": selected,
        "source_names": [files[i].name for i in selected],
    }


# --------------------------------------------------------------------------- videos


def _video_error(scene: str | None, src: Path, why: str) -> StageError:
    return StageError(
        scene,
        STAGE,
        f"video does not decode: {src} ({why})",
        "check that the file is a complete video that ffmpeg can play (e.g. `ffprobe FILE`); "
        "re-export or re-download it, or extract its frames into a folder of images",
    )


def _short(err: BaseException, limit: int = 300) -> str:
    """First line of an exception message (imageio-ffmpeg appends ffmpeg's whole stderr)."""
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return first[:limit]


def _open_video(src: Path, scene: str | None) -> tuple[Any, dict]:
    """Open ``src`` with imageio's FFMPEG plugin; return the reader and its metadata."""
    import imageio.v2 as iio2

    try:
        reader = iio2.get_reader(str(src), format="FFMPEG")
    except Exception as err:  # imageio raises OSError, ValueError, RuntimeError... by cause
        raise _video_error(scene, src, _short(err)) from err
    try:
        meta = dict(reader.get_meta_data())
    except Exception as err:
        reader.close()
        raise _video_error(scene, src, _short(err)) from err
    return reader, meta


def _iter_video(src: Path, reader: Any, scene: str | None) -> Iterator[np.ndarray]:
    """Decoded frames, (H, W, 3) uint8 RGB, one at a time; decode errors become StageError."""
    frames = iter(reader)
    index = 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as err:
            raise _video_error(scene, src, f"frame {index}: {_short(err)}") from err
        rgb = np.asarray(frame)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        yield np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        index += 1


def _count_video_frames(src: Path, scene: str | None) -> int:
    """Number of frames ffmpeg decodes from ``src`` (a full decode without copying frames out)."""
    import imageio_ffmpeg

    try:
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(src))
    except Exception as err:
        raise _video_error(scene, src, _short(err)) from err
    return int(n)


class _VideoPass(NamedTuple):
    """Outcome of one decode of a video."""

    #: source indices of the frames written, in order
    written: list[int]
    #: frames decoded (all of the video's frames when ``ended``)
    decoded: int
    #: whether the video ended before the last frame asked for (or was read to its end)
    ended: bool
    #: frames per second from the container, None if unknown
    fps: float | None
    #: frame count the container header implies (duration x fps), None if unknown
    header_frames: int | None


def _video_pass(
    src: Path,
    wanted: Callable[[int], bool],
    last: int | None,
    writer: _FrameWriter,
    scene: str | None,
) -> _VideoPass:
    """Decode ``src`` from its first frame, writing each frame ``i`` with ``wanted(i)``.

    Decoding stops after frame ``last`` (None = at the end of the video).
    """
    reader, meta = _open_video(src, scene)
    fps = _positive(meta.get("fps"))
    duration = _positive(meta.get("duration"))
    header_frames = round(duration * fps) if fps and duration else None
    if writer.total is None and header_frames is not None:
        cfg = writer.cfg
        end = header_frames if cfg.end is None else min(cfg.end, header_frames)
        writer.total, writer.approx = len(range(cfg.start, end, cfg.stride)), True
    written: list[int] = []
    decoded = 0
    try:
        for i, rgb in enumerate(_iter_video(src, reader, scene)):
            decoded = i + 1
            if wanted(i):
                writer.write(rgb)
                written.append(i)
            if last is not None and i >= last:
                return _VideoPass(written, decoded, False, fps, header_frames)
    finally:
        reader.close()
    if decoded == 0:
        raise _video_error(scene, src, "no video frames decoded")
    return _VideoPass(written, decoded, True, fps, header_frames)


def _positive(value: Any) -> float | None:
    """``value`` as a float if it is a finite positive number, else None."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _extract_video(src: Path, out_dir: Path, cfg: FramesConfig, scene: str | None) -> dict:
    if src.suffix.lower() in IMAGE_SUFFIXES:
        raise StageError(
            scene,
            STAGE,
            f"source {src} is a single image; NSFF needs a sequence of frames",
            "point the source at the folder that holds all the frames, or at a video",
        )
    # Frames the plan assumes the video has: frames.end (checked while decoding), or with a cap
    # and no end an ffmpeg count; None = decode to the end, keeping start::stride as it comes.
    num_plan: int | None = cfg.end
    counted = False
    if num_plan is None and cfg.max_frames is not None:
        num_plan, counted = _count_video_frames(src, scene), True
    if num_plan is not None:
        plan = select_indices(num_plan, cfg)
        if counted:
            _check_selection(plan, num_plan, "frames", cfg, scene)
        writer = _FrameWriter(out_dir, cfg, total=len(plan), scene=scene)
        last = plan[-1] if plan else cfg.start
        run = _video_pass(src, set(plan).__contains__, last, writer, scene)
    else:
        writer = _FrameWriter(out_dir, cfg, total=None, scene=scene)
        run = _video_pass(
            src, lambda i: i >= cfg.start and (i - cfg.start) % cfg.stride == 0, None, writer, scene
        )

    if not run.ended:
        _check_selection(run.written, None, "frames", cfg, scene)
    else:
        # The video was read to its end, so its length is now known exactly.
        num = run.decoded
        if run.header_frames is not None and num < run.header_frames - max(
            2, run.header_frames // 10
        ):
            logger.warning(
                "frames: %s ended after %d frames but its header implies about %d "
                "(duration x fps); the file may be truncated",
                src,
                num,
                run.header_frames,
            )
        final = select_indices(num, cfg)
        _check_selection(final, num, "frames", cfg, scene)
        if final != run.written:
            logger.info(
                "frames: the video has %d frames, fewer than planned; second pass for %s",
                num,
                _range_text(cfg),
            )
            writer.reset()
            writer.total, writer.approx = len(final), False
            run = _video_pass(src, set(final).__contains__, final[-1], writer, scene)
            if run.written != final:
                raise _video_error(
                    scene, src, f"two decodes gave different frame counts ({num}, {run.decoded})"
                )

    return {
        "kind": "video",
        "fps": run.fps,
        "source_size": writer.source_size,
        "size": writer.size,
        "source_indices": run.written,
        "source_names": None,
    }


# --------------------------------------------------------------------------- source frames


def read_source_frames(
    frames_json: str | Path,
    max_size: tuple[int, int] | None = SOURCE_MAX_SIZE,
    scene: str | None = None,
    stage: str = STAGE,
) -> Iterator[np.ndarray]:
    """The selected frames of a scene at source resolution, in order, one at a time.

    For the pretrained prior backends (DPT, RAFT, Mask R-CNN), which run at source resolution
    and resize their outputs to the training size. ``frames_json`` (written by
    :func:`extract_frames`) says which source and which of its frames. Frames larger than
    ``max_size`` (W, H) are scaled down by one factor keeping the aspect ratio (INTER_AREA), as
    nsff_pl's preprocessing did; None keeps the full size.

    Images are read with :func:`nsff_core.model.io.read_image`, as the frames rule read them (EXIF
    orientation, 16-bit, grey, alpha), so the sizes agree with ``frames.json``.

    Yields:
        (H, W, 3) uint8 RGB frames.
    Raises:
        StageError (naming ``stage``): the source changed, disappeared or no longer decodes
            since the frames rule ran.
    """
    info = json.loads(Path(frames_json).read_text())
    src = Path(info["source"])
    hint = "rerun the frames rule (the source changed or moved since it ran)"
    if not src.exists():
        raise StageError(scene, stage, f"source not found: {src}", hint)
    w0, h0 = info["source_size"]

    def fit(rgb: np.ndarray, what: str) -> np.ndarray:
        if rgb.shape[1::-1] != (w0, h0):
            raise StageError(
                scene,
                stage,
                f"{what} is {rgb.shape[1]}x{rgb.shape[0]}, but the frames rule recorded "
                f"{w0}x{h0} in {frames_json}",
                hint,
            )
        return cap_size(rgb, max_size)

    if info["kind"] == "images":
        for name in info["source_names"]:
            try:
                rgb = read_image(src / name)
            except CorruptFileError as err:
                raise StageError(
                    scene, stage, f"cannot read source image {src / name}: {err.cause}", hint
                ) from err
            yield fit(rgb, f"source image {src / name}")
        return
    wanted = list(info["source_indices"])
    reader, _ = _open_video(src, scene)
    try:
        k = 0
        for i, rgb in enumerate(_iter_video(src, reader, scene)):
            if k < len(wanted) and i == wanted[k]:
                yield fit(rgb, f"frame {i} of {src}")
                k += 1
                if k == len(wanted):
                    return
    finally:
        reader.close()
    raise StageError(scene, stage, f"{src} ended before source frame {wanted[k]}", hint)
