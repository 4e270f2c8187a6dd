"""Shared fixtures: the synthetic scene (ground truth) and its frames on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsff_core.config import SyntheticConfig
from nsff_core.io import frame_name, write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_scene():
    """The demo-sized synthetic scene: 24 frames at 320x180 with exact ground truth."""
    from nsff_core.synthetic import render_scene

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
