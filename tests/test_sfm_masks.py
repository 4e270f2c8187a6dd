"""The masks SfM sees are made at a fixed analysis size (rule sfm_masks), so the cameras do not
depend on the training size; SfM and the sparse depth prior take them at that size."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from nsff_core.config import FlowConfig, FramesConfig, MasksConfig
from nsff_core.errors import StageError
from nsff_core.model import io
from nsff_core.priors import sfm
from nsff_core.priors.frames import extract_frames
from nsff_core.priors.nets.images import cap_size, capped_size
from nsff_core.priors.sfm_masks import analysis_size, compute_sfm_masks


@pytest.mark.parametrize(
    ("source", "long_side", "expected"),
    [
        ((854, 480), 512, (512, 288)),  # scaled down, aspect kept to a pixel
        ((320, 180), 512, (320, 180)),  # never enlarged
        ((480, 854), 512, (288, 512)),  # portrait: the long side is the height
        ((1000, 40), 500, (800, 32)),  # the short side kept at 32 px
        ((1280, 720), 1280, (1280, 720)),
    ],
)
def test_analysis_size(source, long_side, expected):
    assert analysis_size(source, long_side) == expected


def test_capped_size_is_the_size_cap_size_gives():
    for wh in [(1920, 1080), (854, 480), (4000, 300), (300, 4000), (1281, 721)]:
        rgb = np.zeros((wh[1], wh[0], 3), np.uint8)
        assert capped_size(wh, (1280, 720)) == cap_size(rgb, (1280, 720)).shape[1::-1]
    assert capped_size((4000, 300), None) == (4000, 300)


@pytest.fixture(scope="module")
def source_folder(synthetic_scene, tmp_path_factory):
    """The synthetic scene's 320x180 frames as a folder of images: a user's source."""
    d = tmp_path_factory.mktemp("src") / "images"
    d.mkdir()
    for i, img in enumerate(synthetic_scene.images):
        io.write_image(d / f"img_{i:03d}.png", img)
    return d


def _masks(folder) -> np.ndarray:
    return np.stack([io.read_mask(p) for p in io.list_frames(folder)])


def test_sfm_masks_do_not_depend_on_the_training_size(source_folder, synthetic_scene, tmp_path):
    """Two training widths, one set of SfM masks: identical files at the analysis size, and
    they cover the movers (the epipolar test on the scene's own flow)."""
    made = []
    for width in (160, 512):
        d = tmp_path / f"w{width}"
        info = extract_frames(
            source_folder, d / "frames", d / "frames.json", FramesConfig(width=width)
        )
        assert info["size"][0] == width
        summary = compute_sfm_masks(
            d / "frames.json", d / "sfm_masks", MasksConfig(), FlowConfig(), 256, "scene"
        )
        assert summary["size"] == [256, 144] and summary["frames"] == 24
        made.append(_masks(d / "sfm_masks"))
        # nothing but the masks is left beside them
        assert sorted(p.name for p in d.iterdir()) == ["frames", "frames.json", "sfm_masks"]
    assert made[0].shape == (24, 144, 256)
    assert np.array_equal(made[0], made[1])
    truth = np.stack(
        [
            cv2.resize(m.astype(np.float32), (256, 144), interpolation=cv2.INTER_AREA) > 0.5
            for m in synthetic_scene.dynamic_mask
        ]
    )
    # SfM masks are grown by a margin: most of the movers' pixels must be inside them, and the
    # static scene mostly outside
    recall = (made[0] & truth).sum() / truth.sum()
    false_pos = (made[0] & ~truth).sum() / (~truth).sum()
    assert recall > 0.7, recall
    assert false_pos < 0.05, false_pos


def test_sfm_takes_masks_at_their_own_size_and_refuses_another_aspect(tmp_path):
    frames = [tmp_path / "00000.png"]
    masks = tmp_path / "masks"
    masks.mkdir()
    dynamic = np.zeros((144, 256), bool)
    dynamic[40:80, 100:150] = True
    io.write_mask(masks / "00000.png", dynamic)
    out = tmp_path / "colmap"
    # training frames 160x90, SfM images 640x360: the mask is resized to the SfM size
    sfm._write_colmap_masks(frames, masks, out, (90, 160), (360, 640), "scene")
    use = io.read_mask(out / "00000.png.png")
    assert use.shape == (360, 640)
    # the mover's box (rows 40-80, columns 100-150) scaled by 2.5, and only a pixel's margin
    assert not use[100:200, 250:375].any()
    assert use[:97].all() and use[203:].all() and use[:, :247].all() and use[:, 378:].all()
    io.write_mask(masks / "00000.png", np.zeros((100, 100), bool))
    with pytest.raises(StageError, match="sfm_masks"):
        sfm._write_colmap_masks(frames, masks, tmp_path / "c2", (90, 160), (360, 640), "scene")


def test_frames_json_of_the_analysis_is_not_left_behind(source_folder, tmp_path):
    """A failing flow leaves no masks folder that looks complete."""
    extract_frames(source_folder, tmp_path / "frames", tmp_path / "frames.json", FramesConfig())
    bad = FlowConfig(dis_preset="nonsense")
    with pytest.raises(StageError):
        compute_sfm_masks(tmp_path / "frames.json", tmp_path / "m", MasksConfig(), bad, 256)
    assert not (tmp_path / "m").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "frames.json"]
    json.loads((tmp_path / "frames.json").read_text())  # the user's frames.json is untouched
