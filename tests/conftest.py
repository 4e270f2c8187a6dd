"""Shared fixtures: the synthetic scene (ground truth) and its frames on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsff_core.config import SyntheticConfig
from nsff_core.model.io import frame_name, write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_scene():
    """The demo-sized synthetic scene: 24 frames at 320x180 with exact ground truth."""
    from nsff_core.model.synthetic import render_scene

    return render_scene(SyntheticConfig())


@pytest.fixture(scope="session")
def synthetic_frames_dir(synthetic_scene, tmp_path_factory) -> Path:
    """The synthetic scene's frames written losslessly as frames/00000.png ..."""
    d = tmp_path_factory.mktemp("synthetic") / "frames"
    d.mkdir()
    for i, img in enumerate(synthetic_scene.images):
        write_image(d / frame_name(i), img)
    return d


@pytest.fixture(scope="session")
def synthetic_flow(synthetic_frames_dir):
    """DIS flow of the synthetic frames with the default config: (fw, bw, ok) folders."""
    from nsff_core.config import FlowConfig
    from nsff_core.priors.flow import compute_flow

    root = synthetic_frames_dir.parent
    dirs = root / "flow_fw", root / "flow_bw", root / "flow_ok"
    summary = compute_flow(synthetic_frames_dir, *dirs, FlowConfig(), scene="synthetic")
    return (*dirs, summary)


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory) -> Path:
    """A tiny synthetic scene (12 frames, 160x90) preprocessed by every prior stage, laid out
    as results/<scene>/ (frames, flow, masks, sfm, cameras.npz, disp)."""
    from nsff_core.config import DepthConfig, FlowConfig, MasksConfig, SfmConfig
    from nsff_core.model.synthetic import render_scene
    from nsff_core.priors.depth import compute_depth
    from nsff_core.priors.flow import compute_flow
    from nsff_core.priors.masks import compute_masks, sfm_masks_config
    from nsff_core.priors.sfm import run_sfm

    d = tmp_path_factory.mktemp("tiny")
    scene = render_scene(SyntheticConfig(num_frames=12, width=160, height=90, novel_offsets=()))
    (d / "frames").mkdir()
    for i, img in enumerate(scene.images):
        write_image(d / "frames" / frame_name(i), img)
    flow_dirs = d / "flow_fw", d / "flow_bw", d / "flow_ok"
    compute_flow(d / "frames", *flow_dirs, FlowConfig(), scene="tiny")
    # as the workflow: masks for SfM and depth from the flow, the final masks after them
    sfm_masks = sfm_masks_config(MasksConfig())
    compute_masks(d / "frames", *flow_dirs, d / "sfm_masks", sfm_masks, scene="tiny")
    run_sfm(
        d / "frames",
        d / "sfm_masks",
        d / "sfm",
        d / "cameras.npz",
        d / "poses_bounds.npy",
        SfmConfig(),
        scene="tiny",
    )
    compute_depth(
        d / "frames",
        d / "sfm_masks",
        d / "sfm",
        d / "cameras.npz",
        d / "disp",
        DepthConfig(),
        "tiny",
    )
    compute_masks(
        d / "frames",
        *flow_dirs,
        d / "masks",
        MasksConfig(),
        scene="tiny",
        cameras=d / "cameras.npz",
        disp_dir=d / "disp",
    )
    return d
