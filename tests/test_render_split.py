"""Rendering a split of a trained (tiny) scene: files, sizes and error messages."""

import numpy as np
import pytest

from nsff_core.config import TrainConfig
from nsff_core.errors import StageError
from nsff_core.model import io

pytestmark = pytest.mark.stage

TINY = dict(width=16, depth=2, time_dim=4, num_samples=8, batch_size=32, steps_per_epoch=5)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_scene_dir, tmp_path_factory):
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path_factory.mktemp("train")
    return train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=2), scene="tiny")


def test_render_test_split(tiny_scene_dir, tiny_ckpt, tmp_path):
    from nsff_core.workflow.stages.render_split import render_split

    summary = render_split(
        tiny_ckpt, tiny_scene_dir / "cameras.npz", "test", tmp_path, chunk=4096, scene="tiny"
    )
    assert summary["frames"] == 12
    frames = io.list_frames(tmp_path / "test")
    assert len(frames) == 12 and io.read_image(frames[0]).shape == (90, 160, 3)
    for name in ("test.mp4", "test_depth.mp4", "test_static.mp4", "test_dynamic.mp4"):
        assert (tmp_path / name).stat().st_size > 0


def test_render_fixed_view_and_gif(tiny_scene_dir, tiny_ckpt, tmp_path):
    from nsff_core.workflow.stages.render_split import render_split

    split = "test_fixview3_interp0"
    render_split(tiny_ckpt, tiny_scene_dir / "cameras.npz", split, tmp_path, video_format="gif")
    imgs = np.stack([io.read_image(p) for p in io.list_frames(tmp_path / split)])
    assert imgs.shape == (12, 90, 160, 3) and (tmp_path / f"{split}.gif").exists()


def test_render_fractional_times(tiny_scene_dir, tiny_ckpt, tmp_path):
    """Frames at fractional times (interpolated) of the trained scene: a camera path."""
    from nsff_core.model.paths import CameraPath
    from nsff_core.workflow.stages.render_split import render_split

    cams = io.read_cameras(tiny_scene_dir / "cameras.npz")
    times = np.array([2.0, 2.5, 10.75])
    path = CameraPath(c2w=cams["c2w"][[2, 2, 10]], K=cams["K"], hw=(90, 160), times=times, name="p")
    path.save(tmp_path / "paths" / "slow.npz")
    summary = render_split(
        tiny_ckpt, tiny_scene_dir / "cameras.npz", "path_slow", tmp_path / "out", tmp_path / "paths"
    )
    assert summary["frames"] == 3
    imgs = np.stack([io.read_image(p) for p in io.list_frames(tmp_path / "out" / "path_slow")])
    assert imgs.shape == (3, 90, 160, 3) and imgs.std() > 0
    for suffix in ("", "_depth", "_static", "_dynamic"):
        assert (tmp_path / "out" / f"path_slow{suffix}.mp4").stat().st_size > 0


@pytest.mark.parametrize(
    "split, needle",
    [
        ("test_sprial", "test_sprial"),
        ("test_fixview40_interp0", "40"),
        ("path_orbit", "paths_dir"),
    ],
)
def test_render_errors_name_scene_and_rule(tiny_scene_dir, tiny_ckpt, tmp_path, split, needle):
    from nsff_core.workflow.stages.render_split import render_split

    with pytest.raises(StageError, match="scene 'tiny', rule 'render'") as err:
        render_split(tiny_ckpt, tiny_scene_dir / "cameras.npz", split, tmp_path, scene="tiny")
    assert needle in str(err.value)
    assert not (tmp_path / f"{split}.mp4").exists() and not (tmp_path / split).exists()


def test_a_failed_write_leaves_no_output_old_or_new(
    tiny_scene_dir, tiny_ckpt, tmp_path, monkeypatch
):
    """Videos of an earlier model on disk, then the render fails while writing its second
    video: neither the earlier files nor the new ones (nor scratch files) are left."""
    from nsff_core.workflow.stages.render_split import render_split

    names = ("test.mp4", "test_depth.mp4", "test_static.mp4", "test_dynamic.mp4")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "00000.png").write_bytes(b"old frame")
    for name in names:
        (tmp_path / name).write_bytes(b"old video")
    calls = []
    write_video = io.write_video

    def failing(path, frames, fps):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        write_video(path, frames, fps)

    monkeypatch.setattr(io, "write_video", failing)
    with pytest.raises(OSError, match="No space left"):
        render_split(tiny_ckpt, tiny_scene_dir / "cameras.npz", "test", tmp_path, scene="tiny")
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_outputs_by_name(tiny_scene_dir, tiny_ckpt, tmp_path):
    """The render rule passes its declared outputs: every file goes where it says, in the
    format of its suffix."""
    from nsff_core.workflow.stages.render_split import render_split

    outputs = {k: tmp_path / f"o_{k}.gif" for k in ("video", "depth", "static", "dynamic")}
    outputs["frames"] = tmp_path / "o_frames"
    split = "test_fixview3_interp0"
    render_split(tiny_ckpt, tiny_scene_dir / "cameras.npz", split, None, outputs=outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in outputs.values())
    assert len(io.list_frames(outputs["frames"])) == 12
    assert all(outputs[k].stat().st_size > 0 for k in ("video", "depth", "static", "dynamic"))
