"""Held-out frames: judging a run on any video (config ``eval.holdout_every``).

A video has no ground truth for new viewpoints, but it has frames. With ``holdout_every: k``
(k >= 2) the frames ``k - 1, 2k - 1, 3k - 1, ...`` are left out of training; the first and the
last frame are always trained, so every held-out frame lies between two training frames and
is rendered by time interpolation, never extrapolated. The model sees only the training frames:

- its frames are renumbered ``0 .. M - 1`` (model time j is source frame ``frame_ids[j]``), so
  a held-out frame sits at a fractional model time between its two training neighbours and is
  rendered by the splatting of :mod:`nsff_core.model.interp`, like any fractional time;
- its flow priors link consecutive *training* frames (rule ``flow_holdout`` computes them from
  those two images only), its disparity and mask priors are those of the training frames, and
  the nearest-content depth that sets the scene bounds is measured on them alone.

The held-out frames do take part in two preprocessing steps: SfM (their poses are needed to
render them at all) and, through the flow between neighbouring frames, the motion masks of the
training frames next to them. Their images are never a training target and their own priors
are never in a loss.

Everything outside training speaks source frame numbers: camera paths, render splits
(``test`` renders all N frames, the held-out ones included) and camera-path files. The
checkpoint keeps ``frame_ids``, and :func:`model_times` maps source times to model times.
"""

from __future__ import annotations

import numpy as np


def held_out_frames(num_frames: int, every: int) -> np.ndarray:
    """Indices of the held-out frames of an ``num_frames`` video (empty when ``every`` is 0).

    Raises:
        ValueError: ``every`` is 1 or negative, or the video is too short to hold one out.
    """
    every = int(every)
    if every == 0:
        return np.zeros(0, dtype=np.int64)
    if every < 2:
        raise ValueError(f"eval.holdout_every must be 0 (off) or at least 2, got {every}")
    if num_frames < 3:
        raise ValueError(
            f"a {num_frames}-frame video is too short to hold out a frame (the first and last "
            "frames are always trained): set eval.holdout_every to 0"
        )
    idx = np.arange(every - 1, num_frames - 1, every, dtype=np.int64)
    if idx.size == 0:
        raise ValueError(
            f"eval.holdout_every {every} holds out no frame of a {num_frames}-frame video "
            f"(the first and last frames are always trained): use at most {num_frames - 1}, "
            "or 0 to turn it off"
        )
    return idx


def training_frames(num_frames: int, every: int) -> np.ndarray:
    """Indices of the frames a run trains on (all of them when ``every`` is 0)."""
    keep = np.ones(num_frames, dtype=bool)
    keep[held_out_frames(num_frames, every)] = False
    return np.flatnonzero(keep).astype(np.int64)


def model_times(times: np.ndarray, frame_ids: np.ndarray | list[int] | None) -> np.ndarray:
    """Source frame times (frame units) -> model times (the training frames' numbering).

    Piecewise linear through ``(frame_ids[j], j)``: a training frame maps to its integer model
    time, a time between two training frames to the fraction of the way between them. With
    ``frame_ids`` None (a run without held-out frames) the times are returned unchanged.
    """
    times = np.asarray(times, np.float64)
    if frame_ids is None:
        return times
    ids = np.asarray(frame_ids, np.float64)
    return np.interp(times, ids, np.arange(len(ids), dtype=np.float64))


def source_frame_count(frame_ids: np.ndarray | list[int] | None, num_frames: int) -> int:
    """Frames of the source video: ``frame_ids[-1] + 1`` (the last frame is always trained),
    or ``num_frames`` for a run without held-out frames."""
    if frame_ids is None:
        return int(num_frames)
    return int(frame_ids[-1]) + 1


def nearest_training_frame(frame: int, frame_ids: np.ndarray | list[int]) -> int:
    """The training frame nearest in time to ``frame`` (the earlier one on a tie): the
    nearest-frame baseline of a held-out frame."""
    ids = np.asarray(frame_ids, np.int64)
    return int(ids[np.argmin(np.abs(ids - int(frame)))])
