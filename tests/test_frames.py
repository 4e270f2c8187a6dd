"""Tests of the ``frames`` stage (nsff_core.priors.frames) on tiny generated videos and folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from nsff_core.config import MIN_FRAME_SIDE, FramesConfig
from nsff_core.errors import StageError
from nsff_core.model.io import read_image, write_image
from nsff_core.priors.frames import extract_frames, output_size, select_indices

W, H, N = 64, 48, 12
SCENE = "tiny_scene"


def source_frame(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Frame ``i`` of the test sequence, (h, w, 3) uint8: smooth, with green level 15 + 20 i so
    that the frame index can be read back from a lossy decode."""
    x = np.linspace(0, 1, w)[None, :]
    y = np.linspace(0, 1, h)[:, None]
    r = 40 + 160 * x + 0 * y
    g = np.full((h, w), 15 + 20 * i, float)
    b = 60 + 120 * y + 0 * x
    return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


def frame_index(rgb: np.ndarray) -> int:
    """Inverse of the green level of :func:`source_frame` (any size)."""
    return int(round((rgb[..., 1].mean() - 15) / 20))


def write_video(path: Path, n: int = N, **kwargs) -> Path:
    frames = np.stack([source_frame(i) for i in range(n)])
    iio.imwrite(
        path, frames, plugin="FFMPEG", fps=10, codec="libx264", macro_block_size=1,
        quality=9, **kwargs,
    )  # fmt: skip
    return path


def write_folder(folder: Path, n: int = N, name: str = "img_{:03d}.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(folder / name.format(i), source_frame(i))
    return folder


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture()
def out(tmp_path) -> tuple[Path, Path]:
    """(frames_dir, frames_json) under a results-like folder."""
    return tmp_path / "results" / SCENE / "frames", tmp_path / "results" / SCENE / "frames.json"


def run(source, out, **cfg) -> dict:
    cfg.setdefault("width", None)
    return extract_frames(source, out[0], out[1], FramesConfig(**cfg), scene=SCENE)


def written_frames(frames_dir: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted(frames_dir.iterdir())]


def expect_failure(source, out, *causes: str, **cfg) -> StageError:
    """Run, expect a StageError naming the scene, the rule and ``causes``; nothing left behind."""
    with pytest.raises(StageError) as info:
        run(source, out, **cfg)
    msg = str(info.value)
    assert SCENE in msg and "frames" in msg, msg
    assert info.value.stage == "frames" and info.value.scene == SCENE
    for cause in causes:
        assert cause in msg, (cause, msg)
    assert info.value.hint
    assert not out[0].exists(), "frames_dir left behind"
    assert not out[1].exists(), "frames_json left behind"
    leftovers = [p.name for p in out[0].parent.iterdir()] if out[0].parent.exists() else []
    assert not leftovers, leftovers
    return info.value


# --------------------------------------------------------------------------- extraction


def test_video_extraction(video, out):
    info = run(video, out)
    names = sorted(p.name for p in out[0].iterdir())
    assert names == [f"{i:05d}.png" for i in range(N)]
    assert json.loads(out[1].read_text()) == info
    assert info["source"] == str(video.resolve()) and Path(info["source"]).is_absolute()
    assert info["kind"] == "video"
    assert info["fps"] == pytest.approx(10.0)
    assert info["source_size"] == [W, H] and info["size"] == [W, H]
    assert info["scale"] == [1.0, 1.0]
    assert info["count"] == N
    assert info["source_indices"] == list(range(N))
    assert info["source_names"] is None
    assert info["config"] == {
        "start": 0, "end": None, "stride": 1, "max_frames": None, "width": None, "height": None,
    }  # fmt: skip
    for i, rgb in enumerate(written_frames(out[0])):
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        err = np.abs(rgb.astype(float) - source_frame(i)).mean()
        assert err < 4.0, (i, err)  # lossy h264 + yuv420, smooth content


def test_image_folder_extraction(tmp_path, out):
    folder = tmp_path / "imgs"
    folder.mkdir()
    # lexical order = time order, any case of suffix, other files / folders / hidden files ignored
    for i in range(5):
        suffix = [".png", ".PNG", ".png", ".Png", ".png"][i]
        write_image(folder / f"f{i:02d}{suffix}", source_frame(i))
    write_image(folder / "f05.jpg", source_frame(5))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()
    write_image(folder / ".hidden.png", source_frame(9))

    info = run(folder, out)
    assert info["kind"] == "images" and info["fps"] is None
    assert info["source"] == str(folder.resolve())
    assert info["count"] == 6 and info["source_indices"] == list(range(6))
    assert info["source_names"] == [
        "f00.png",
        "f01.PNG",
        "f02.png",
        "f03.Png",
        "f04.png",
        "f05.jpg",
    ]
    assert info["source_size"] == [W, H] and info["size"] == [W, H] and info["scale"] == [1, 1]
    assert json.loads(out[1].read_text()) == info
    frames = written_frames(out[0])
    assert [p.name for p in sorted(out[0].iterdir())] == [f"{i:05d}.png" for i in range(6)]
    for i in range(5):
        np.testing.assert_array_equal(frames[i], source_frame(i))  # PNG is lossless
    assert np.abs(frames[5].astype(float) - source_frame(5)).mean() < 3.0  # JPEG


def test_progress_is_logged(tmp_path, out, caplog):
    with caplog.at_level(logging.INFO, logger="nsff_core.priors.frames"):
        run(write_folder(tmp_path / "imgs", n=20), out)
    progress = [r.getMessage() for r in caplog.records if "written" in r.getMessage()]
    assert progress[-1] == "frames: 20/20 written"
    assert "frames: 2/20 written" in progress and len(progress) == 10


def test_rerun_replaces_outputs(video, out):
    run(video, out)
    info = run(video, out, stride=4)
    assert info["source_indices"] == [0, 4, 8]
    assert len(list(out[0].iterdir())) == 3


# --------------------------------------------------------------------------- selection

SELECTIONS = [
    ({}, list(range(12))),
    ({"start": 2, "end": 9, "stride": 3}, [2, 5, 8]),
    ({"stride": 5}, [0, 5, 10]),
    ({"end": 100}, list(range(12))),  # end beyond the source: to its end
    ({"max_frames": 4}, [0, 4, 7, 11]),  # positions round(0, 3.67, 7.33, 11)
    ({"start": 1, "stride": 2, "max_frames": 4}, [1, 5, 7, 11]),  # 1,3,..,11 at 0,2,3,5
    ({"start": 3, "end": 40, "max_frames": 4}, [3, 6, 8, 11]),  # 3..11 at 0,3,5,8
    ({"max_frames": 20}, list(range(12))),
    ({"start": 10}, [10, 11]),
]


@pytest.mark.parametrize(("cfg", "expected"), SELECTIONS)
def test_select_indices(cfg, expected):
    assert select_indices(12, FramesConfig(**cfg)) == expected


@pytest.mark.parametrize(("cfg", "expected"), SELECTIONS[1:7])
def test_image_folder_selection(tmp_path, out, cfg, expected):
    info = run(write_folder(tmp_path / "imgs"), out, **cfg)
    assert info["source_indices"] == expected and info["count"] == len(expected)
    assert info["source_names"] == [f"img_{i:03d}.png" for i in expected]
    for rgb, i in zip(written_frames(out[0]), expected, strict=True):
        np.testing.assert_array_equal(rgb, source_frame(i))


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"start": 2, "end": 9, "stride": 3}, [2, 5, 8]),  # stops decoding at frame 8
        ({"start": 1, "stride": 2, "max_frames": 4}, [1, 5, 7, 11]),  # counts frames first
        ({"start": 3, "end": 40, "max_frames": 4}, [3, 6, 8, 11]),  # video shorter: 2nd pass
        ({"start": 10, "end": 40}, [10, 11]),
    ],
)
def test_video_selection(video, out, cfg, expected):
    info = run(video, out, **cfg)
    assert info["source_indices"] == expected and info["count"] == len(expected)
    assert [frame_index(rgb) for rgb in written_frames(out[0])] == expected


# --------------------------------------------------------------------------- resizing


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (32, None, (32, 24)),
        (None, 30, (40, 30)),
        (50, None, (50, 38)),  # 48 * 50 / 64 = 37.5 -> nearest even 38
        (33, None, (33, 24)),  # odd given side is kept; 24.75 -> 24
        (100, 30, (100, 30)),  # both given: aspect not kept
        (128, None, (128, 96)),  # enlarging
        (None, None, (64, 48)),
    ],
)
def test_output_size(width, height, size):
    assert output_size((W, H), FramesConfig(width=width, height=height)) == size


def test_resize_one_side_keeps_aspect(tmp_path, out):
    info = run(write_folder(tmp_path / "imgs", n=3), out, width=48)
    assert info["size"] == [48, 36] and info["source_size"] == [W, H]
    assert info["scale"] == [0.75, 0.75]
    for i, rgb in enumerate(written_frames(out[0])):
        assert rgb.shape == (36, 48, 3)
        # area averaging when shrinking (a non-integer factor, where it differs from bilinear)
        ref = cv2.resize(source_frame(i), (48, 36), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(rgb, ref)


def test_resize_both_sides_and_enlarge(video, out):
    info = run(video, out, width=100, height=36, end=3)
    assert info["size"] == [100, 36] and info["scale"] == pytest.approx([100 / 64, 36 / 48])
    rgb = written_frames(out[0])[1]
    assert rgb.shape == (36, 100, 3)
    ref = cv2.resize(source_frame(1), (100, 36), interpolation=cv2.INTER_CUBIC)
    assert np.abs(rgb.astype(float) - ref).mean() < 4.0


def test_resize_height_only_on_video(video, out):
    info = run(video, out, height=36, stride=6)
    assert info["size"] == [48, 36] and info["source_indices"] == [0, 6]
    assert all(rgb.shape == (36, 48, 3) for rgb in written_frames(out[0]))


# --------------------------------------------------------------------------- bad inputs


def test_missing_source(tmp_path, out):
    expect_failure(tmp_path / "nope.mp4", out, "source not found", "nope.mp4")


def test_empty_folder(tmp_path, out):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("no frames here")
    expect_failure(folder, out, "no images in folder", str(folder.resolve()))


def test_single_image_folder(tmp_path, out):
    err = expect_failure(write_folder(tmp_path / "one", n=1), out, "only 1 frame(s) selected")
    assert "of the 1 images" in str(err) and "start=0 end=end stride=1" in str(err)


def test_single_frame_selected_from_video(video, out):
    err = expect_failure(video, out, "only 1 frame(s) selected", "start=11", start=11)
    assert "12 frames" in str(err)


def test_single_frame_selected_by_stride(tmp_path, out):
    expect_failure(
        write_folder(tmp_path / "imgs", n=4), out, "only 1 frame(s)", "stride=9", stride=9
    )


def test_single_image_file(tmp_path, out):
    path = tmp_path / "still.png"
    write_image(path, source_frame(0))
    expect_failure(path, out, "single image", "still.png")


def test_corrupt_image(tmp_path, out):
    folder = write_folder(tmp_path / "imgs", n=6)
    (folder / "img_003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    expect_failure(folder, out, "cannot read image", "img_003.png")


def test_images_of_different_sizes(tmp_path, out):
    folder = write_folder(tmp_path / "imgs", n=6)
    write_image(folder / "img_004.png", source_frame(4, w=32, h=32))
    expect_failure(folder, out, "different sizes", "img_004.png", "32x32", "64x48", "img_000.png")


def test_video_that_is_text(tmp_path, out):
    path = tmp_path / "fake.mp4"
    path.write_text("this is not a video\n" * 20)
    expect_failure(path, out, "video does not decode", "fake.mp4")


def test_truncated_video(video, tmp_path, out):
    path = tmp_path / "cut.mp4"
    data = video.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # index (moov) at the end is lost
    expect_failure(path, out, "video does not decode", "cut.mp4")


def test_truncated_streamable_video_warns(tmp_path, out, caplog):
    # With the index up front a cut file still plays up to the cut: keep those frames, but warn.
    full = write_video(tmp_path / "fast.mp4", output_params=["-movflags", "+faststart"])
    data = full.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with caplog.at_level(logging.WARNING, logger="nsff_core.priors.frames"):
        info = run(cut, out)
    assert 2 <= info["count"] < N
    assert any("truncated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "cfg", [{"start": 12}, {"start": 20, "end": 30}, {"start": 15, "max_frames": 4}]
)
def test_range_outside_video(video, out, cfg):
    expect_failure(video, out, "frame range outside", f"start={cfg['start']}", "12 frames", **cfg)


def test_range_outside_image_folder(tmp_path, out):
    expect_failure(write_folder(tmp_path / "imgs", n=5), out, "outside", "5 images", start=7)


@pytest.mark.parametrize(
    ("cfg", "cause"),
    [
        ({"stride": 0}, "frames.stride must be >= 1, got 0"),
        ({"start": 5, "end": 5}, "frames.end must be greater than frames.start"),
        ({"start": 5, "end": 2}, "start=5 end=2"),
        ({"start": -1}, "frames.start must be >= 0"),
        ({"width": 0}, "frames.width must be a positive"),
        ({"height": -2}, "frames.height must be a positive"),
        ({"max_frames": 1}, "frames.max_frames must be >= 2"),
        ({"width": 32.5}, "frames.width must be an integer, got 32.5"),
    ],
)
def test_bad_config(video, out, cfg, cause):
    expect_failure(video, out, cause, **cfg)


def test_failure_removes_outputs_of_an_earlier_run(video, tmp_path, out):
    run(video, out)
    assert out[0].is_dir() and out[1].is_file()
    expect_failure(video, out, "frame range outside", start=50)


def test_source_inside_output_folder_is_refused(tmp_path, out):
    write_folder(out[0], n=3)
    with pytest.raises(StageError, match="output folder"):
        run(out[0], out)
    assert len(list(out[0].iterdir())) == 3  # the source is not deleted


def test_read_source_frames_returns_the_selected_frames_at_source_size(tmp_path):
    from nsff_core.priors.frames import read_source_frames

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 255, (60, 100, 3), dtype=np.uint8) for _ in range(6)]
    for i, img in enumerate(originals):
        write_image(folder / f"f{i:02d}.png", img)
    cfg = FramesConfig(start=1, stride=2, width=80)
    extract_frames(folder, tmp_path / "frames", tmp_path / "frames.json", cfg)
    got = list(read_source_frames(tmp_path / "frames.json"))
    assert [g.shape for g in got] == [(60, 100, 3)] * 3
    for g, i in zip(got, (1, 3, 5), strict=True):
        assert np.array_equal(g, originals[i])
    small = list(read_source_frames(tmp_path / "frames.json", max_size=(50, 50)))
    assert small[0].shape == (30, 50, 3)  # one factor, aspect kept


# --------------------------------------------------------------------------- image kinds


def _write_kind(path: Path, kind: str, i: int) -> None:
    """Image ``i`` of a folder of ``kind``, with content that depends on ``i``."""
    from PIL import Image

    rgb = source_frame(i)
    grey = rgb[..., 1]
    if kind == "grey16":
        cv2.imwrite(str(path), grey.astype(np.uint16) * 257 + 100)  # full 16-bit range
    elif kind == "grey_alpha":
        Image.fromarray(np.dstack([grey, np.full_like(grey, 255 - i)]), "LA").save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, np.zeros_like(grey)]), "RGBA").save(path)
    elif kind == "palette":
        Image.fromarray(rgb).quantize(colors=64).save(path)
    elif kind == "exif_rotated_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 8  # "rotate 90 CCW to display": shown as a 48x64 portrait
        Image.fromarray(rgb).save(path, exif=exif.tobytes(), quality=95)


IMAGE_KINDS = {
    "grey16": ".png",
    "grey_alpha": ".png",
    "rgba": ".png",
    "palette": ".png",
    "exif_rotated_jpeg": ".jpg",
}


@pytest.mark.parametrize("kind", sorted(IMAGE_KINDS))
def test_every_image_kind_gives_rgb_frames_that_the_pretrained_reader_agrees_with(
    tmp_path, out, kind
):
    from nsff_core.priors.frames import read_source_frames

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        _write_kind(folder / f"img_{i}{IMAGE_KINDS[kind]}", kind, i)
    info = run(folder, out)
    w, h = (H, W) if kind == "exif_rotated_jpeg" else (W, H)  # upright, as a viewer shows it
    assert info["source_size"] == [w, h] and info["size"] == [w, h]
    frames = written_frames(out[0])
    # the pretrained backends re-read the source: same sizes and pixels as the frames rule
    source = list(read_source_frames(out[1], scene=SCENE, stage="depth"))
    assert len(source) == 3
    for i, (frame, src) in enumerate(zip(frames, source, strict=True)):
        assert frame.shape == src.shape == (h, w, 3) and src.dtype == np.uint8
        np.testing.assert_array_equal(frame, src)
        green = source_frame(i)[..., 1].astype(float)
        if kind == "exif_rotated_jpeg":
            green = np.rot90(green)  # orientation 8: the stored image turned 90 degrees CCW
        if kind in ("grey16", "grey_alpha"):
            assert (frame == frame[..., :1]).all()  # grey in all three channels
        # the content survives: 16-bit scaled (not wrapped), alpha dropped, rotation applied
        assert np.abs(frame[..., 1] - green).mean() < 3, i


def test_read_source_frames_reports_a_source_image_that_no_longer_decodes(tmp_path, out):
    from nsff_core.priors.frames import read_source_frames

    folder = write_folder(tmp_path / "imgs", n=3)
    run(folder, out)
    (folder / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(StageError) as info:
        list(read_source_frames(out[1], scene=SCENE, stage="depth"))
    msg = str(info.value)
    assert "rule 'depth'" in msg and "img_001.png" in msg and "frames rule" in msg, msg


# --------------------------------------------------------------------------- frame sizes


@pytest.mark.parametrize(("w", "h"), [(1, 1), (10000, 10), (31, 64)])
def test_too_small_source_frames_are_refused(tmp_path, out, w, h):
    folder = write_folder(tmp_path / "imgs", n=3)
    for p in folder.iterdir():
        write_image(p, np.full((h, w, 3), 128, np.uint8))
    err = expect_failure(folder, out, f"{w}x{h}", f"at least {MIN_FRAME_SIDE} px", width=512)
    assert "full-size" in err.hint


@pytest.mark.parametrize(
    ("cfg", "size", "fix"),
    [
        ({"width": 512}, "512x6", "set frames.width to at least 3200"),
        ({"height": 64}, "6400x64", None),  # fine: a wide frame is not refused for its width
        ({"height": 16}, "1600x16", "set frames.height to at least 32"),
        ({"width": 512, "height": 20}, "512x20", "frames.width and frames.height"),
    ],
)
def test_derived_training_sizes_below_the_minimum_are_refused(tmp_path, out, cfg, size, fix):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"img_{i}.png", np.full((40, 4000, 3), 50 + i, np.uint8))
    if fix is None:
        info = run(folder, out, **cfg)
        assert "x".join(map(str, info["size"])) == size
        return
    err = expect_failure(folder, out, "4000x40", size, f"at least {MIN_FRAME_SIDE} px", **cfg)
    assert f"frames.width={cfg.get('width', 'null')}" in str(err)
    assert f"frames.height={cfg.get('height', 'null')}" in str(err)
    assert fix in err.hint and "crop" in err.hint


def test_derived_size_is_checked_on_videos_too(video, out):
    # the video is 64x48: height 30 gives 40x30
    expect_failure(video, out, "64x48", "40x30", "frames.height=30", height=30)


def test_enlarging_the_source_is_allowed_with_a_warning(tmp_path, out, caplog):
    folder = write_folder(tmp_path / "imgs", n=3)
    with caplog.at_level(logging.WARNING, logger="nsff_core.priors.frames"):
        info = run(folder, out, width=128)
    assert info["size"] == [128, 96]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "64x48" in warnings[0] and "128x96" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nsff_core.priors.frames"):
        run(folder, out, width=48)  # shrinking: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
