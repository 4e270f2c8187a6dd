"""Image sizes that the pretrained networks and the prior stages share: the cap on the source
frames' size (nsff_pl's preprocessing rule).

numpy/OpenCV only, importing no other module of the package, so the networks (:mod:`.raft`,
:mod:`.dpt`) and the stages that read source frames (:mod:`nsff_core.priors.frames`,
:mod:`nsff_core.priors.sfm_masks`) use the one rule without the networks importing a stage.
"""

from __future__ import annotations

import numpy as np

#: pretrained backends read the source frames no larger than this (nsff_pl's preprocessing cap)
SOURCE_MAX_SIZE = (1280, 720)


def cap_size(rgb: np.ndarray, max_size: tuple[int, int] | None) -> np.ndarray:
    """Scale ``rgb`` down by max(w / max_w, h / max_h) when that exceeds 1 (nsff_pl's rule,
    cv2.INTER_AREA, sizes truncated); otherwise return it unchanged."""
    h, w = rgb.shape[:2]
    size = capped_size((w, h), max_size)
    if size == (w, h):
        return rgb
    import cv2

    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def capped_size(wh: tuple[int, int], max_size: tuple[int, int] | None) -> tuple[int, int]:
    """(W, H) that :func:`cap_size` gives a frame of size ``wh``."""
    w, h = (int(v) for v in wh)
    if max_size is None:
        return w, h
    s = max(w / max_size[0], h / max_size[1])
    if s <= 1:
        return w, h
    # at least 1 px: a very elongated frame would otherwise truncate its short side to 0
    return max(1, int(w / s)), max(1, int(h / s))
