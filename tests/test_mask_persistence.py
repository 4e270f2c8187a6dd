"""Masks of movers that stop (nsff_core.priors.masks.persist_masks, ``masks.persist_frames``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nsff_core.config import MasksConfig
from nsff_core.model import io
from nsff_core.model.metrics import iou
from nsff_core.priors.masks import _shift, persist_masks

H, W = 60, 100


def _square(x: int, y: int, size: int = 12) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y : y + size, x : x + size] = True
    return m


def _write_flows(d, shape, offsets, camera=(0, 0)):
    """Flows of a clip whose background moves by ``camera`` px per frame and whose object,
    ``shape`` (H, W) moved by ``offsets[i]`` (dx, dy) in frame i, moves from one offset to the
    next; every pixel passes the forward-backward test. Returns the object's masks."""
    for sub in ("flow_fw", "flow_bw", "flow_ok"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    n = len(offsets)
    masks = [_shift(shape, offsets[i]) for i in range(n)]
    for i in range(n):
        for j, name, tag in ((i + 1, "flow_fw", "fw"), (i - 1, "flow_bw", "bw")):
            if 0 <= j < n:
                flow = np.zeros((H, W, 2), np.float32)
                flow[...] = np.multiply(camera, j - i)
                flow[masks[i]] = np.subtract(offsets[j], offsets[i])
                io.write_flo(d / name / io.frame_name(i, ".flo"), flow)
                io.write_mask(d / "flow_ok" / f"{i:05d}_{tag}.png", np.ones((H, W), bool))
    return masks


def _write_square_flows(d, positions, camera=(1, 0)):
    """:func:`_write_flows` of the 12-px square at ``positions[i]`` (x, y) in frame i."""
    _write_flows(d, _square(0, 0), positions, camera)


def _persist(d, masks, frames=8):
    cfg = dataclasses.replace(MasksConfig(), persist_frames=frames)
    return persist_masks(masks, d / "flow_fw", d / "flow_bw", d / "flow_ok", cfg)


#: a square moving 3 px per frame for 5 frames, then at rest (with the camera, 1 px per
#: frame) for 7 frames
MOVING = [(10 + 3 * i, 20) for i in range(5)]
RESTING = [(MOVING[-1][0] + k, 20) for k in range(1, 8)]


def test_a_mover_that_stops_stays_masked_where_it_rests(tmp_path):
    positions = MOVING + RESTING
    _write_square_flows(tmp_path, positions)
    # detected while it moves only (at rest its flow is the camera's)
    detected = [
        _square(*p) if i < len(MOVING) else np.zeros((H, W), bool) for i, p in enumerate(positions)
    ]
    out = _persist(tmp_path, detected, frames=4)
    for i, p in enumerate(positions):
        truth = _square(*p)
        if i < len(MOVING) + 4:
            # carried as a whole along its flow: the same square, where it is
            assert iou(out[i], truth) == pytest.approx(1.0), i
        else:
            assert not out[i].any(), i  # beyond persist_frames
    for m, d in zip(out, detected, strict=True):
        assert (m >= d).all()  # detections are kept


def test_a_mover_at_rest_before_it_starts_is_masked_by_the_backward_pass(tmp_path):
    positions = RESTING[::-1] + MOVING[::-1]  # rests, then moves (leftwards)
    _write_square_flows(tmp_path, positions)
    detected = [
        _square(*p) if i >= len(RESTING) else np.zeros((H, W), bool)
        for i, p in enumerate(positions)
    ]
    out = _persist(tmp_path, detected)
    for i, p in enumerate(positions):
        assert iou(out[i], _square(*p)) == pytest.approx(1.0), i


def test_nothing_is_carried_at_zero_or_when_nothing_stops(tmp_path):
    positions = [(10 + 3 * i, 20) for i in range(8)]
    _write_square_flows(tmp_path, positions)
    detected = [_square(*p) for p in positions]
    out = _persist(tmp_path, detected)
    assert all((a == b).all() for a, b in zip(out, detected, strict=True))
    gaps = [m if i != 4 else np.zeros_like(m) for i, m in enumerate(detected)]
    assert not _persist(tmp_path, gaps, frames=0)[4].any()
    # a missed frame in the middle of a moving square is filled at the square's place
    assert iou(_persist(tmp_path, gaps)[4], detected[4]) == pytest.approx(1.0)


#: an object that moves 3 px per frame over frames 0-3, then rests
STOPS = [(3 * min(i, 3), 0) for i in range(8)]


def test_single_frame_thin_edge_and_still_detections_are_not_spread(tmp_path):
    def carried(shape, offsets, detected_frames, name):
        d = tmp_path / name
        truth = _write_flows(d, shape, offsets)
        empty = np.zeros((H, W), bool)
        detected = [m if i in detected_frames else empty for i, m in enumerate(truth)]
        out = _persist(d, detected)
        return [o & ~m for o, m in zip(out, detected, strict=True)], truth

    square = _square(30, 20)
    # a mover detected while it moves (frames 0-3) is carried through its rest, where it is
    extra, truth = carried(square, STOPS, range(4), "mover")
    assert all(iou(extra[i], truth[i]) == pytest.approx(1.0) for i in range(4, 8))
    # a false detection in one frame only is not spread
    extra, _ = carried(square, STOPS, [3], "single")
    assert not any(m.any() for m in extra)
    # nor is a thin sliver (3 px, as along a depth edge) detected while it moves
    sliver = np.zeros((H, W), bool)
    sliver[30:33, 20:60] = True
    extra, _ = carried(sliver, STOPS, range(4), "thin")
    assert not any(m.any() for m in extra)
    # nor a part touching the frame's edge
    extra, _ = carried(_square(0, 20), [(0, 3 * min(i, 3)) for i in range(8)], range(4), "edge")
    assert not any(m.any() for m in extra)
    # nor a part that moves with the scene around it (a patch the clean-up enclosed)
    extra, _ = carried(square, [(0, 0)] * 8, range(4), "still")
    assert not any(m.any() for m in extra)


@pytest.mark.stage
def test_the_stopping_ball_of_the_suite_is_masked_while_it_rests(tmp_path):
    """suite_stop on exact flow, cameras and depth: the rigidity masks miss the ball while it
    rests; carried, it is masked there, and no more of the static scene is."""
    from tests.test_rigidity import _masks, _score, _write_scene

    d, truth = _write_scene(tmp_path, "suite_stop", frames=16)
    rest = slice(7, 9)  # clip phases 0.47-0.53: inside the rest [0.35, 0.65]
    off = _masks(d, MasksConfig(backend="rigidity", persist_frames=0), "off")
    on = _masks(d, MasksConfig(backend="rigidity"), "on")
    rest_off, _ = _score(off[rest], truth[rest])
    rest_on, _ = _score(on[rest], truth[rest])
    all_off, fp_off = _score(off, truth)
    all_on, fp_on = _score(on, truth)
    assert rest_off < 0.3 and rest_on > 0.6, (rest_off, rest_on)
    assert all_on > all_off and fp_on <= fp_off + 0.005, (all_off, all_on, fp_off, fp_on)
