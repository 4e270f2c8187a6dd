"""Training data of one scene: the arrays of frames and priors, rays, batches.

The arrays are read from ``results/<scene>/`` by :func:`nsff_core.workflow.stages.scene.load_scene`
(the workflow side); this module builds them into a :class:`SceneData` and samples batches.

A training batch is a set of rays of ONE frame t (as nsff_pl): the flow and depth losses
compare with priors of that frame, and the disparity loss is scale/shift invariant per batch.
Frames are drawn away from the previous draw (as nsff_pl: outside +-5 frames) so that the static
field does not absorb dynamic content early in training; the window shrinks for short clips so
that scenes with fewer than 12 frames train (nsff_pl crashed there).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nsff_core.config import TrainConfig
from nsff_core.errors import ConfigError

from .rays import SceneNormalization, get_rays_at, normalize_poses, rays_to_ndc

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class SceneData:
    """Frames, priors and normalised cameras of one scene, at training resolution (H, W).

    Attributes:
        rgb: (N, H, W, 3) float32 in [0, 1].
        disp: (N, H, W) float32 relative disparity prior.
        flow_fw, flow_bw: (N, H, W, 2) float32 flow in pixels to frame t+1 / t-1 (zeros where
            the neighbour does not exist).
        flow_fw_valid, flow_bw_valid: (N, H, W) bool: the neighbour exists and the flow passed
            the forward-backward test.
        dynamic: (N, H, W) bool motion masks (True = dynamic).
        K: (3, 3) training intrinsics (OpenCV pixels, integer pixel centres).
        c2w: (N, 4, 4) float64 NSFF world, NSFF (OpenGL) camera axes.
        normalization: SfM world -> NSFF world similarity.
        near_depth: SfM units, the scale of the normalisation (see :mod:`nsff_core.model.rays`).
        frame_ids: (N,) source frame of each training frame: ``0 .. N - 1``, or the training
            frames of a run with held-out frames (:mod:`nsff_core.holdout`).
        forward_zoom: how much the far content's image size changes over the training
            cameras (:func:`~nsff_core.model.cameras.forward_zoom` at the depth of the far SfM
            points); None where not measured. Decides ``train.static_last_delta: auto``.
    """

    rgb: Tensor
    disp: Tensor
    flow_fw: Tensor
    flow_bw: Tensor
    flow_fw_valid: Tensor
    flow_bw_valid: Tensor
    dynamic: Tensor
    K: np.ndarray
    c2w: np.ndarray
    normalization: SceneNormalization
    near_depth: float
    frame_ids: np.ndarray | None = None
    forward_zoom: float | None = None

    def __post_init__(self) -> None:
        if self.frame_ids is None:
            self.frame_ids = np.arange(self.num_frames, dtype=np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[2])

    def meta(self, keep_frame_ids: bool = False) -> SceneMeta:
        """What a model trained on this scene keeps of it (:class:`SceneMeta`);
        ``keep_frame_ids``: a run with held-out frames (else ``frame_ids`` is None)."""
        return SceneMeta(
            num_frames=self.num_frames,
            K=self.K,
            c2w=self.c2w,
            hw=self.hw,
            normalization=self.normalization,
            frame_ids=tuple(int(i) for i in self.frame_ids) if keep_frame_ids else None,
        )


@dataclass(frozen=True, eq=False)
class SceneMeta:
    """What a trained model keeps of its scene (the ``meta`` of a checkpoint's
    ``hyper_parameters``, stored as :meth:`to_dict`, plain lists and numbers).

    Attributes:
        num_frames: N, the training frames.
        K: (3, 3) float64 training intrinsics (for NDC).
        c2w: (N, 4, 4) float64 training poses, NSFF world and axes.
        hw: (H, W) of the training frames (hard sampling, plane bounds); None in checkpoints
            from before it was kept.
        normalization: SfM world -> NSFF world, for rendering SfM-world cameras; None in
            checkpoints from before it was kept.
        frame_ids: (N,) source frame of each training frame, for a run with held-out frames
            (:mod:`nsff_core.holdout`); None: frame i is source frame i.
    """

    num_frames: int
    K: np.ndarray
    c2w: np.ndarray
    hw: tuple[int, int] | None = None
    normalization: SceneNormalization | None = None
    frame_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        K = np.array(self.K, dtype=np.float64)
        c2w = np.array(self.c2w, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"SceneMeta.K must be (3, 3), got {K.shape}")
        if c2w.shape != (int(self.num_frames), 4, 4):
            raise ValueError(f"SceneMeta.c2w must be ({self.num_frames}, 4, 4), got {c2w.shape}")
        object.__setattr__(self, "num_frames", int(self.num_frames))
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "c2w", c2w)
        if self.hw is not None:
            object.__setattr__(self, "hw", (int(self.hw[0]), int(self.hw[1])))
        if isinstance(self.normalization, dict):
            object.__setattr__(
                self, "normalization", SceneNormalization.from_dict(self.normalization)
            )
        if self.frame_ids is not None:
            object.__setattr__(self, "frame_ids", tuple(int(i) for i in self.frame_ids))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, numbers, None): what a checkpoint stores."""
        return {
            "num_frames": self.num_frames,
            "K": self.K.tolist(),
            "c2w": self.c2w.tolist(),
            "hw": list(self.hw) if self.hw is not None else None,
            "normalization": self.normalization.to_dict() if self.normalization else None,
            "frame_ids": list(self.frame_ids) if self.frame_ids is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneMeta:
        """Inverse of :meth:`to_dict`; ``hw``, ``normalization`` and ``frame_ids`` may be
        missing (older checkpoints). Unknown keys raise ``TypeError``."""
        return cls(**d)


def nearest_content_depth(
    point_depths: list[np.ndarray],
    prior_at_points: list[np.ndarray] | None = None,
    prior_maps: list[np.ndarray] | None = None,
    min_r2: float = 0.9,
) -> float:
    """Depth (SfM units) of the nearest scene content over all frames (see docs/method.md,
    "What differs from nsff_pl").

    Per frame, the disparity prior sampled at the SfM points is fitted as ``a / z + b``. When
    the fit explains it (r^2 > ``min_r2``) the frame's nearest content is the depth of the
    95th-percentile disparity of the whole prior map, ``a / (P95 - b)``, which includes
    dynamic regions that SfM never sees; otherwise the 5th percentile of the point depths.

    Args:
        point_depths: per frame, camera-z depths (M,) of the SfM points it sees.
        prior_at_points: per frame, the disparity prior at those points (M,).
        prior_maps: per frame, the whole disparity prior (H, W).

    Returns:
        min over frames of the candidates.
    """
    candidates = []
    for i, z in enumerate(point_depths):
        z = np.asarray(z, np.float64)
        z = z[np.isfinite(z) & (z > 0)]
        if z.size == 0:
            continue
        cand = float(np.percentile(z, 5))
        if prior_at_points is not None and prior_maps is not None and z.size >= 10:
            d = np.asarray(prior_at_points[i], np.float64)
            inv = 1.0 / z
            if d.size == inv.size:
                a, b = np.polyfit(inv, d, 1)
                pred = a * inv + b
                ss_res = float(np.sum((d - pred) ** 2))
                ss_tot = float(np.sum((d - d.mean()) ** 2))
                r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
                p95 = float(np.percentile(prior_maps[i], 95))
                if r2 > min_r2 and a > 0 and p95 > b:
                    cand = min(cand, a / (p95 - b))
        candidates.append(cand)
    if not candidates:
        raise ValueError("no frame has SfM points with positive depth")
    return float(min(candidates))


def scene_data_from_arrays(
    rgb: np.ndarray,
    disp: np.ndarray,
    flow_fw: np.ndarray,
    flow_bw: np.ndarray,
    flow_fw_ok: np.ndarray,
    flow_bw_ok: np.ndarray,
    dynamic: np.ndarray,
    K: np.ndarray,
    c2w_opencv: np.ndarray,
    content_depth: float,
) -> SceneData:
    """Build :class:`SceneData` from arrays (frames uint8 or float, priors as written by the
    preprocessing rules); ``content_depth`` is :func:`nearest_content_depth`'s result.

    ``flow_fw`` is (N-1, H, W, 2) (frame i to i+1), ``flow_bw`` (N-1, H, W, 2) (frame i+1 to
    i), with their consistency masks of the same leading shape.
    """
    n = rgb.shape[0]
    h, w = rgb.shape[1:3]
    rgb_f = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    fw = np.zeros((n, h, w, 2), np.float32)
    bw = np.zeros((n, h, w, 2), np.float32)
    fw_ok = np.zeros((n, h, w), bool)
    bw_ok = np.zeros((n, h, w), bool)
    fw[:-1], fw_ok[:-1] = flow_fw, flow_fw_ok
    bw[1:], bw_ok[1:] = flow_bw, flow_bw_ok
    near_depth = 0.75 * content_depth
    c2w, norm = normalize_poses(c2w_opencv, near_depth)
    return SceneData(
        rgb=torch.from_numpy(rgb_f),
        disp=torch.from_numpy(np.asarray(disp, np.float32)),
        flow_fw=torch.from_numpy(fw),
        flow_bw=torch.from_numpy(bw),
        flow_fw_valid=torch.from_numpy(fw_ok),
        flow_bw_valid=torch.from_numpy(bw_ok),
        dynamic=torch.from_numpy(np.asarray(dynamic, bool)),
        K=np.asarray(K, np.float64),
        c2w=c2w,
        normalization=norm,
        near_depth=near_depth,
    )


@dataclass
class RayBatch:
    """Rays of one frame t with their targets (R rays).

    origins, dirs: (R, 3) NDC rays; rgb (R, 3); t (R,) long; disp (R,); xy (R, 2) pixel
    coordinates; flow_fw, flow_bw (R, 2) pixels; flow_fw_valid, flow_bw_valid (R,) bool;
    dynamic (R,) bool; pixel (R,) long flat index y * W + x.
    """

    origins: Tensor
    dirs: Tensor
    rgb: Tensor
    t: Tensor
    disp: Tensor
    xy: Tensor
    flow_fw: Tensor
    flow_bw: Tensor
    flow_fw_valid: Tensor
    flow_bw_valid: Tensor
    dynamic: Tensor
    pixel: Tensor

    def to(self, device: torch.device | str) -> RayBatch:
        return RayBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


#: the per-pixel targets of a :class:`RayBatch` (SceneData tensors of the same names)
PIXEL_TARGETS = ("rgb", "disp", "flow_fw", "flow_bw", "flow_fw_valid", "flow_bw_valid", "dynamic")


def rays_of_pixels(
    K: Tensor | np.ndarray,
    c2w: Tensor,
    t: Tensor,
    pixel: Tensor,
    width: int,
    take: Callable[[str, Tensor, Tensor], Tensor],
) -> RayBatch:
    """The :class:`RayBatch` of one frame's flat pixel indices ``pixel`` (R,): NDC rays of
    camera ``c2w`` (3 or 4, 4) with intrinsics ``K``, frame index ``t`` broadcast to (R,),
    and each of :data:`PIXEL_TARGETS` as ``take(name, y, x)`` for the pixels' rows and columns."""
    y, x = pixel // width, pixel % width
    xy = torch.stack([x, y], dim=-1).to(torch.float32)
    o, d = get_rays_at(K, c2w, xy)
    o_ndc, d_ndc = rays_to_ndc(o, d, K)
    targets = {name: take(name, y, x) for name in PIXEL_TARGETS}
    return RayBatch(
        origins=o_ndc, dirs=d_ndc, t=t.expand_as(pixel).contiguous(), xy=xy, pixel=pixel, **targets
    )


def make_batch(data: SceneData, t: int, pixel: Tensor) -> RayBatch:
    """The rays of frame ``t`` through flat pixel indices ``pixel`` (R,), in NDC."""
    c2w = torch.as_tensor(data.c2w[t], dtype=torch.float32)
    return rays_of_pixels(
        data.K,
        c2w,
        torch.full_like(pixel, t),
        pixel,
        data.hw[1],
        lambda name, y, x: getattr(data, name)[t, y, x],
    )


def exclusion_window(num_frames: int, window: int = 5) -> int:
    """Half-width of the frames excluded around the previous draw: ``window`` (nsff_pl's 5),
    shrunk so that at least half of the frames remain drawable from any previous frame."""
    return max(0, min(window, (num_frames - 1) // 4))


@dataclass(frozen=True)
class SamplerConfig:
    """How training pixels are drawn (see :class:`FrameSampler`; built from the train settings
    by :func:`nsff_core.model.train_views.sampler_config`)."""

    #: rays per step, all from one frame
    batch_size: int = TrainConfig.batch_size
    #: seed of the sampler's generator (under DDP: train.seed + rank)
    seed: int = TrainConfig.seed
    #: share of every batch drawn from the frame's grown motion mask (train.dynamic_sampling)
    dynamic_share: float = TrainConfig.dynamic_sampling
    #: draw pixels with probability ~ (1 - SSIM) of their last prediction, the weights
    #: refreshed every ``hard_sampling_every`` steps (by the system, which keeps them)
    hard_sampling: bool = TrainConfig.hard_sampling
    hard_sampling_every: int = TrainConfig.hard_sampling_every
    #: share of the pixels drawn ~ the running colour error of their tile (train.error_sampling)
    error_share: float = TrainConfig.error_sampling
    #: side of those tiles in pixels (train.error_sampling_tile)
    error_tile: int = TrainConfig.error_sampling_tile

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_share < 1.0:
            raise ConfigError(f"train.error_sampling must be in [0, 1), got {self.error_share}")
        if self.error_tile < 1:
            raise ConfigError(f"train.error_sampling_tile must be >= 1, got {self.error_tile}")
        if self.error_share > 0 and self.hard_sampling:
            raise ConfigError(
                "train.error_sampling and train.hard_sampling both set the pixel weights: "
                "use one of them"
            )


class FrameSampler:
    """Draws (frame, pixels) for training batches.

    The first frame is uniform; each next frame is uniform among the frames farther than
    :func:`exclusion_window` from the previous one (never the previous frame itself). Pixels are
    uniform, or proportional to per-pixel weights (hard sampling: ``weights``) when set.

    With ``dynamic`` masks and ``dynamic_share`` > 0, the first ``round(share * batch_size)``
    pixels of a frame's batch are drawn uniformly (with replacement) from its mask grown by
    :data:`DYNAMIC_SAMPLING_GROW_PX`, and the rest as above; a frame without mask pixels draws
    them all as above. Example: share 0.25, batch 1024 -> 256 mover pixels and 768 others.
    """

    def __init__(
        self,
        num_frames: int,
        hw: tuple[int, int],
        batch_size: int,
        seed: int = 0,
        dynamic: Tensor | None = None,
        dynamic_share: float = 0.0,
    ) -> None:
        if not 0.0 <= dynamic_share < 1.0:
            raise ConfigError(f"train.dynamic_sampling must be in [0, 1), got {dynamic_share}")
        self.num_frames = num_frames
        self.num_pixels = hw[0] * hw[1]
        self.batch_size = batch_size
        self.window = exclusion_window(num_frames)
        self.generator = torch.Generator().manual_seed(seed)
        self.previous: int | None = None
        #: (N, H*W) sampling weights, or None for uniform pixels
        self.weights: Tensor | None = None
        #: per frame, the flat indices of its (grown) motion-mask pixels; None = off
        self.dynamic_pixels: list[Tensor] | None = None
        self.num_dynamic = 0
        if dynamic is not None and dynamic_share > 0:
            if tuple(dynamic.shape) != (num_frames, *hw):
                raise ValueError(f"masks {tuple(dynamic.shape)} are not {(num_frames, *hw)}")
            grown = grow_mask(dynamic, DYNAMIC_SAMPLING_GROW_PX)
            self.dynamic_pixels = [m.reshape(-1).nonzero()[:, 0] for m in grown]
            self.num_dynamic = min(batch_size, round(dynamic_share * batch_size))

    @classmethod
    def from_config(
        cls,
        cfg: SamplerConfig,
        num_frames: int,
        hw: tuple[int, int],
        dynamic: Tensor | None = None,
    ) -> FrameSampler:
        """The sampler of ``cfg`` for ``num_frames`` frames of size ``hw``; ``dynamic``: the
        (N, H, W) motion masks (used only with ``cfg.dynamic_share`` > 0)."""
        return cls(
            num_frames,
            hw,
            cfg.batch_size,
            seed=cfg.seed,
            dynamic=dynamic if cfg.dynamic_share > 0 else None,
            dynamic_share=cfg.dynamic_share,
        )

    def next_frame(self) -> int:
        frames = torch.arange(self.num_frames)
        if self.previous is not None and self.num_frames > 1:
            frames = frames[(frames - self.previous).abs() > self.window]
        t = int(frames[torch.randint(len(frames), (1,), generator=self.generator)])
        self.previous = t
        return t

    def set_weights(self, weights: Tensor | None) -> None:
        """Hard sampling: draw pixels ~ ``weights`` (N, H*W) from now on (None: uniform)."""
        self.weights = None if weights is None else weights.detach().float().cpu().clone()

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the stream (see :meth:`load_state`)."""
        return {"kind": "host", "rng": self.generator.get_state(), "previous": self.previous}

    def load_state(self, state: dict[str, Any]) -> bool:
        """Continue the stream of :meth:`state`; False (nothing changed) for a state of the
        other kind of sampler (:class:`DeviceFrameSampler`), whose generator differs."""
        if state.get("kind", "host") != "host":
            return False
        self.generator.set_state(state["rng"])
        self.previous = state["previous"]
        return True

    def next_batch(self, data: SceneData) -> RayBatch:
        """The next training batch (a frame and its pixels) of ``data``."""
        t = self.next_frame()
        return make_batch(data, t, self.next_pixels(t))

    def next_pixels(self, t: int) -> Tensor:
        n_dyn = 0
        if self.dynamic_pixels is not None and len(self.dynamic_pixels[t]):
            n_dyn = self.num_dynamic
        n = self.batch_size - n_dyn
        if self.weights is None:
            rest = torch.randint(self.num_pixels, (n,), generator=self.generator)
        else:
            rest = torch.multinomial(self.weights[t], n, replacement=True, generator=self.generator)
        if not n_dyn:
            return rest
        pool = self.dynamic_pixels[t]
        picks = pool[torch.randint(len(pool), (n_dyn,), generator=self.generator)]
        return torch.cat([picks, rest])


class DeviceFrameSampler:
    """:class:`FrameSampler`'s draws made where the model trains, with the scene's frames and
    priors kept there: no host work and no host synchronisation per step.

    The distribution is :class:`FrameSampler`'s: the frame uniform among those outside the
    exclusion window of the previous one; the first ``round(share * batch)`` pixels from the
    frame's grown motion mask (all from the rest when the frame has none), the others uniform
    or ~ the hard-sampling weights. The draws differ (another generator, other arithmetic: the
    frame by the rank among the allowed ones, weighted pixels by inverse CDF), so a stream of
    this sampler is not that of a :class:`FrameSampler` with the same seed.

    Args:
        data: the scene (its tensors are copied to ``device`` once).
        cfg: the sampling settings (:class:`SamplerConfig`).
        device: where the model trains.
    """

    def __init__(self, data: SceneData, cfg: SamplerConfig, device: torch.device | str) -> None:
        if not 0.0 <= cfg.dynamic_share < 1.0:
            raise ConfigError(f"train.dynamic_sampling must be in [0, 1), got {cfg.dynamic_share}")
        dev = torch.device(device)
        self.device = dev
        n, (h, w) = data.num_frames, data.hw
        self.num_frames, self.hw, self.num_pixels = n, (h, w), h * w
        self.batch_size = cfg.batch_size
        self.window = exclusion_window(n)
        self.generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        #: the previous frame as a 0-d tensor on the device (-1: none yet)
        self.previous = torch.full((), -1, dtype=torch.long, device=dev)
        self.frames = torch.arange(n, device=dev)
        flat = n * h * w
        #: each of :data:`PIXEL_TARGETS`, flat over (frame, pixel), on the device
        self.targets = {
            name: getattr(data, name).reshape(flat, *getattr(data, name).shape[3:]).to(dev)
            for name in PIXEL_TARGETS
        }
        self.K = torch.as_tensor(data.K, dtype=torch.float32, device=dev)
        self.c2w = torch.as_tensor(data.c2w, dtype=torch.float32, device=dev)
        #: (N, H*W) float64 cumulative hard-sampling weights, or None for uniform pixels
        self.cdf: Tensor | None = None
        self.num_dynamic = 0
        if cfg.dynamic_share > 0:
            grown = grow_mask(data.dynamic, DYNAMIC_SAMPLING_GROW_PX).reshape(n, -1)
            counts = grown.sum(dim=1)
            width = max(1, int(counts.max()))
            # every frame's mask pixels first (stable sort of "not in mask"), padded by others
            order = torch.sort((~grown).to(torch.uint8), dim=1, stable=True).indices
            self.pool = order[:, :width].contiguous().to(dev)
            self.pool_size = counts.to(dev)
            self.num_dynamic = min(cfg.batch_size, round(cfg.dynamic_share * cfg.batch_size))

    def set_weights(self, weights: Tensor | None) -> None:
        """Hard sampling: draw pixels ~ ``weights`` (N, H*W) from now on (None: uniform)."""
        if weights is None:
            self.cdf = None
            return
        w = weights.detach().to(self.device, torch.float64).reshape(self.num_frames, -1)
        self.cdf = torch.cumsum(w, dim=1)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the stream (reads the device once)."""
        return {
            "kind": "device",
            "rng": self.generator.get_state(),
            "previous": int(self.previous),
        }

    def load_state(self, state: dict[str, Any]) -> bool:
        """Continue the stream of :meth:`state`; False (nothing changed) for a host
        sampler's state or one of another device type (the generators differ)."""
        mine = self.generator.get_state()
        if state.get("kind") != "device" or state["rng"].numel() != mine.numel():
            return False
        self.generator.set_state(state["rng"])
        self.previous.fill_(-1 if state["previous"] is None else int(state["previous"]))
        return True

    def _uniform(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def next_frame(self) -> Tensor:
        """The next frame, a (1,) long tensor on the device."""
        allowed = ((self.frames - self.previous).abs() > self.window) | (self.previous < 0)
        if self.num_frames == 1:
            allowed = torch.ones_like(allowed)
        rank = torch.cumsum(allowed.long(), 0)
        count = rank[-1]
        r = (self._uniform(1) * count).long().clamp_max(count - 1)
        t = torch.searchsorted(rank, r, right=True)
        self.previous.copy_(t[0])
        return t

    def next_pixels(self, t: Tensor) -> Tensor:
        """(batch_size,) flat pixel indices of frame ``t`` ((1,) tensor on the device)."""
        n = self.batch_size
        if self.cdf is None:
            pixels = torch.randint(
                self.num_pixels, (n,), generator=self.generator, device=self.device
            )
        else:
            cdf = self.cdf.index_select(0, t)[0]
            u = self._uniform(n).to(cdf.dtype) * cdf[-1]
            pixels = torch.searchsorted(cdf, u, right=True).clamp_max(self.num_pixels - 1)
        if not self.num_dynamic:
            return pixels
        k = self.num_dynamic
        size = self.pool_size.index_select(0, t)
        slot = (self._uniform(k) * size).long().clamp_max((size - 1).clamp_min(0))
        picks = self.pool.index_select(0, t)[0].gather(0, slot)
        return torch.cat([torch.where(size > 0, picks, pixels[:k]), pixels[k:]])

    def next_batch(self, data: SceneData | None = None) -> RayBatch:
        """The next training batch, on the device (``data`` is not read: the sampler holds
        the scene's tensors)."""
        t = self.next_frame()
        pixel = self.next_pixels(t)
        flat = t * self.num_pixels + pixel
        return rays_of_pixels(
            self.K,
            self.c2w.index_select(0, t)[0],
            t,
            pixel,
            self.hw[1],
            lambda name, y, x: self.targets[name][flat],
        )


#: px by which the motion masks grow for :class:`FrameSampler`'s mover pixels: a mover's
#: outline and the background right next to it are where its shape is decided
DYNAMIC_SAMPLING_GROW_PX = 4


def grow_mask(mask: Tensor, px: int) -> Tensor:
    """(N, H, W) bool masks grown by ``px`` pixels (a (2 px + 1)^2 square max filter)."""
    if px <= 0:
        return mask.bool()
    m = mask.float()[:, None]
    return F.max_pool2d(m, 2 * px + 1, stride=1, padding=px)[:, 0] > 0.5


class TileErrors:
    """The running colour error of every tile of every training frame, from the training rays
    themselves (``train.error_sampling``), and the pixel weights it gives.

    A frame of H x W pixels is cut into ``ceil(H / tile) x ceil(W / tile)`` tiles; the errors
    are an (N, tiles) tensor that the caller keeps (the system's buffer, so that a checkpoint
    keeps it), -1 for a tile never drawn. After each step every tile that the batch drew
    pixels of moves its error by ``rate`` of the way to the mean squared colour error of those
    pixels (a tile's first draw sets it). The pixel weights give a share ``share`` of the
    draws in proportion to the root of the tile's error (a tile never drawn counts as the worst
    drawn tile of its frame) and the rest uniformly, so that every pixel keeps a chance.
    Everything runs on the device of the errors (no host read).

    Why tiles: a run of ``cpu_demo`` draws each pixel about once (1,650 steps of 1,024 rays over
    27 frames of 320 x 180), so a pixel's own last error says little; an 8 x 8 tile is drawn
    about 70 times. It is the error map of instant-ngp's training-image sampling, kept per
    tile and frame.
    """

    def __init__(self, hw: tuple[int, int], tile: int, share: float, rate: float = 0.5) -> None:
        h, w = int(hw[0]), int(hw[1])
        self.tile, self.share, self.rate = int(tile), float(share), float(rate)
        self.tiles_x = math.ceil(w / self.tile)
        self.num_tiles = math.ceil(h / self.tile) * self.tiles_x
        ty = torch.arange(h) // self.tile
        tx = torch.arange(w) // self.tile
        #: (H*W,) tile of every pixel
        self.pixel_tile = (ty[:, None] * self.tiles_x + tx[None, :]).reshape(-1)

    def _tiles(self, device: torch.device) -> Tensor:
        if self.pixel_tile.device != device:
            self.pixel_tile = self.pixel_tile.to(device)
        return self.pixel_tile

    @torch.no_grad()
    def update(
        self, errors: Tensor, t: Tensor, pixel: Tensor, error: Tensor, all_ranks: bool = False
    ) -> None:
        """Fold the (B,) squared colour errors of a batch's rays (frames ``t``, flat pixels
        ``pixel``) into ``errors`` (N, tiles), in place; ``all_ranks`` (DDP): the rays of every
        rank's batch, summed in one collective, so that all ranks keep the same errors."""
        flat = t.long() * self.num_tiles + self._tiles(errors.device).index_select(0, pixel.long())
        sums = torch.zeros(errors.numel(), device=errors.device, dtype=errors.dtype)
        counts = torch.zeros_like(sums)
        # a non-finite error (a diverging step, which the divergence guard handles) is left out,
        # so that it never reaches the weights
        finite = torch.isfinite(error)
        error = torch.where(finite, error, torch.zeros_like(error))
        sums.index_add_(0, flat, error.to(errors.dtype))
        counts.index_add_(0, flat, finite.to(errors.dtype))
        if all_ranks:
            both = torch.stack([sums, counts])
            torch.distributed.all_reduce(both)
            sums, counts = both[0], both[1]
        old = errors.view(-1)
        mean = sums / counts.clamp_min(1)
        blended = torch.where(old < 0, mean, old + self.rate * (mean - old))
        old.copy_(torch.where(counts > 0, blended, old))

    @torch.no_grad()
    def pixel_weights(self, errors: Tensor) -> Tensor:
        """(N, H*W) sampling weights of the pixels (see the class docstring)."""
        seen = errors >= 0
        worst = torch.where(seen, errors, torch.zeros_like(errors)).amax(dim=1, keepdim=True)
        worst = torch.where(worst > 0, worst, torch.ones_like(worst))
        score = torch.where(seen, errors, worst).clamp_min(0).sqrt()  # (N, tiles)
        per_pixel = score.index_select(1, self._tiles(errors.device))  # (N, H*W)
        total = per_pixel.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return (1.0 - self.share) / per_pixel.shape[1] + self.share * per_pixel / total
