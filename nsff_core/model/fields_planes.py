"""Plane-factorised static and dynamic fields: the fast alternative to nsff_pl's MLPs.

Selected with ``train.field: planes``; same interface and outputs as
:class:`~nsff_core.model.fields.StaticField` and :class:`~nsff_core.model.fields.DynamicField`, so the
renderer, the losses and time interpolation do not know which one they use.

The representation is the factorisation of K-Planes (Fridovich-Keil et al., CVPR 2023): a
feature at a point is the element-wise product of bilinear lookups in axis-aligned 2D feature
planes, at several resolutions, concatenated over resolutions and decoded by small MLPs.

- static: planes (x, y), (x, z), (y, z) of the NDC position;
- dynamic: the same three spatial planes and (x, t), (y, t), (z, t), where the time axis has one
  row per training frame (``align_corners``), so frame t reads exactly its own row: the per-frame
  time code of NSFF, shared across space through the planes.

Why: on a CPU the MLP fields of nsff_pl spend ~1 MFLOP per sample and need 10^5 steps on a
textured scene; a plane lookup is a few hundred FLOPs, the decoders are 64 wide, and the
features are learned directly (at a higher learning rate, ``train.grid_lr``), so a scene
converges in a few thousand steps. Lookups use ``torch.nn.functional.grid_sample`` (plain torch;
CPU and GPU). The planes cover the NDC box [-ex, ex] x [-ey, ey] x [-1, 1]: NDC is the frustum
of one average camera, and the training cameras that turn or move away from it see beyond
x, y in [-1, 1] (1.5 on the demo's sweep), so with ``train.grid_bounds: rays`` the box is fitted
to every training ray's samples (:func:`nsff_core.model.rays.ndc_extent`); ``ndc`` keeps the cube.
Outside the box the border row is used (that is what draws straight streaks across the parts of
a frame beyond it), and a NaN position reads the centre (it never reaches ``grid_sample``, see
:func:`safe_grid_coords`).

Spatial planes are initialised uniformly in [0.1, 0.5] and time planes to 1, so that at the start
every product is non-zero and the dynamic field starts time-invariant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsff_core.config import MAX_GRID_FEATURES, TrainConfig
from nsff_core.errors import ConfigError

from .fields import DynamicFieldOutput, PositionalEncoding, StaticFieldOutput, check_times

#: planes as slices of the coordinate vector [x, y, z, t]: (x, y), (x, z), (y, z) and, for the
#: dynamic field, (x, t), (y, t), (z, t) (time along the plane's height)
SPATIAL_PLANES = (slice(0, 2), slice(0, 3, 2), slice(1, 3))
TIME_PLANES = (slice(0, 4, 3), slice(1, 4, 2), slice(2, 4))


@dataclass(frozen=True)
class PlaneFieldConfig:
    """Sizes of the plane fields (defaults from :class:`~nsff_core.config.TrainConfig`)."""

    #: resolution of the coarsest spatial planes (cells per NDC axis)
    base_resolution: int = TrainConfig.grid_base_resolution
    #: resolutions double per level: base * 2^l, l < levels (static field)
    levels: int = TrainConfig.grid_levels
    #: levels of the dynamic field (moving content is usually smaller and smoother)
    dynamic_levels: int = TrainConfig.grid_dynamic_levels
    #: levels of the warp field of ``grid_dynamic: deform`` (finest, finest / 2, ...)
    motion_levels: int = TrainConfig.grid_motion_levels
    #: resolution of the finest warp level; None = ``base_resolution``
    motion_resolution: int | None = TrainConfig.grid_motion_resolution
    #: deform: size of a learned code per frame, given to the canonical decoder (0 = none)
    frame_code: int = TrainConfig.grid_frame_code
    #: deform: levels of space-time detail planes read at the canonical position (0 = none)
    detail_levels: int = TrainConfig.grid_detail_levels
    #: deform: cells per axis of the per-frame colour texture over (x, y) (0 = none)
    frame_texture: int = TrainConfig.grid_frame_texture
    #: deform: the neighbour queries of the warped renders train the texture too
    texture_warped: bool = TrainConfig.grid_frame_texture_warped
    #: deform: the frame texture also thins (carves) the dynamic density per frame
    texture_density: bool = TrainConfig.grid_frame_texture_density
    #: static: cells per axis of a feature plane over (x, y) alone (0 = none)
    image_resolution: int = TrainConfig.grid_image_resolution
    #: feature channels per plane and level
    channels: int = TrainConfig.grid_channels
    #: width of the decoder MLPs
    hidden: int = TrainConfig.grid_hidden
    #: view-direction encoding of the static colour decoder
    dir_freqs: int = TrainConfig.dir_freqs
    use_viewdir: bool = TrainConfig.use_viewdir
    #: bound of each scene-flow component, in NDC units per frame
    flow_scale: float = TrainConfig.flow_scale
    #: NDC half-widths (x, y) that the planes cover: [-ex, ex] x [-ey, ey] (z always [-1, 1]);
    #: (1, 1) is the NDC cube, see :func:`nsff_core.model.rays.ndc_extent` for a scene's own
    extent: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.extent) != 2 or not all(e >= 1.0 for e in self.extent):
            raise ConfigError(f"plane field extent must be two values >= 1, got {self.extent}")
        if min(
            self.levels, self.dynamic_levels, self.motion_levels, self.channels, self.hidden
        ) < 1 or (self.base_resolution < 2):
            raise ConfigError(
                "plane field needs grid_base_resolution >= 2 and grid_levels, grid_channels, "
                f"grid_hidden >= 1; got {self.base_resolution}, {self.levels}, "
                f"{self.channels}, {self.hidden}"
            )
        if self.image_resolution < 0 or self.image_resolution == 1:
            raise ConfigError(
                f"grid_image_resolution must be 0 (none) or >= 2, got {self.image_resolution}"
            )
        if self.frame_code < 0 or self.detail_levels < 0:
            raise ConfigError(
                "grid_frame_code and grid_detail_levels must be >= 0, got "
                f"{self.frame_code} and {self.detail_levels}"
            )
        if self.frame_texture < 0 or self.frame_texture == 1:
            raise ConfigError(
                f"grid_frame_texture must be 0 (none) or >= 2, got {self.frame_texture}"
            )
        if self.texture_density and not self.frame_texture:
            raise ConfigError(
                "grid_frame_texture_density needs a frame texture: set grid_frame_texture "
                "(e.g. 256) or turn grid_frame_texture_density off"
            )
        if self.motion_resolution is not None and self.motion_resolution < 2:
            raise ConfigError(
                f"grid_motion_resolution must be >= 2 (or null), got {self.motion_resolution}"
            )

    @property
    def resolutions(self) -> list[int]:
        return [self.base_resolution * 2**level for level in range(self.levels)]

    @property
    def dynamic_resolutions(self) -> list[int]:
        return [self.base_resolution * 2**level for level in range(self.dynamic_levels)]

    @property
    def detail_resolutions(self) -> list[int]:
        """The levels of ``grid_detail_levels``: base * 2^l, as the dynamic levels."""
        return [self.base_resolution * 2**level for level in range(self.detail_levels)]

    @property
    def motion_resolutions(self) -> list[int]:
        """The warp levels of ``grid_dynamic: deform``, coarsest first: the finest
        (``motion_resolution``, default ``base_resolution``) halved per level, at least 2."""
        finest = self.motion_resolution or self.base_resolution
        return [max(finest // 2**k, 2) for k in reversed(range(self.motion_levels))]


class PlaneStack(nn.Module):
    """Feature planes of one resolution level, all of one size, stored as one (n, C, h, w)
    tensor so that one ``grid_sample`` call (parallel over the planes) reads them all;
    ``forward`` returns the element-wise product of the n lookups.

    Args:
        pairs: the two input axes of each plane, as a slice of the coordinate vector; the
            plane of axes (a, b) is indexed by b along its height and a along its width.
        size: (height, width) of every plane.
        channels: features per plane.
        init: "uniform" (spatial planes, U[0.1, 0.5]) or "ones" (time planes).
    """

    def __init__(
        self, pairs: tuple[slice, ...], size: tuple[int, int], channels: int, init: str
    ) -> None:
        super().__init__()
        self.pairs = pairs
        p = torch.empty(len(pairs), channels, *size)
        if init == "ones":
            nn.init.ones_(p)
        else:
            nn.init.uniform_(p, 0.1, 0.5)
        self.planes = nn.Parameter(p)

    def forward(self, coords: Tensor) -> Tensor:
        """(M, D) float32 coordinates -> (M, channels) product of the features.

        Coordinates outside [-1, 1] read the border cells; see :func:`safe_grid_coords` for
        NaN and inf.
        """
        return self.lookup(plane_grid(coords, self.pairs)).t()

    def lookup(self, grid: Tensor) -> Tensor:
        """:meth:`forward`, channels first: (channels, M), on the grid of :func:`plane_grid`
        (built once for every level that reads the same coordinates).

        The fields concatenate levels channels first and hand the decoder one transposed view:
        products, concatenation and their backward then run over contiguous rows, where the
        (M, channels) views of each level made every one of them a strided copy (the fields'
        forward and backward of a ``cpu_demo`` step on one thread: 660 against 850 ms)."""
        f = F.grid_sample(
            self.planes, grid, mode="bilinear", padding_mode="border", align_corners=True
        )  # (n, C, 1, M)
        # unbind, not indexing: the backward of n index selects writes n zero-filled copies
        # of f, unbind's is one stack (with the grids shared across levels, a cpu_demo step
        # at 320x180 on 2 threads went from 536 to 473 ms)
        parts = f.squeeze(2).unbind(0)
        out = parts[0]
        for part in parts[1:]:
            out = out * part
        return out


def plane_grid(coords: Tensor, pairs: tuple[slice, ...]) -> Tensor:
    """The (n, 1, M, 2) ``grid_sample`` grid of planes ``pairs`` at (M, D) ``coords``."""
    return safe_grid_coords(torch.stack([coords[:, pair] for pair in pairs]).unsqueeze(1))


def safe_grid_coords(grid: Tensor) -> Tensor:
    """``grid`` with NaN replaced by 0 and every value clamped to [-1, 1].

    ``grid_sample`` turns a NaN coordinate into an arbitrary cell index, and its CPU backward
    then writes outside the plane (a segmentation fault, seen when a diverging run produced
    NaN sample positions). Clamping gives the same lookup as ``padding_mode="border"`` for
    finite values, and the same zero gradient outside the cube; a NaN coordinate gets a zero
    gradient. Non-finite positions still make the loss non-finite elsewhere (the ray samples
    and the flow terms use them too), which the training's divergence guard reports.
    """
    return torch.nan_to_num(grid, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)


def _extent_scale(cfg: PlaneFieldConfig) -> Tensor:
    """(3,) factors that map the covered NDC box onto the planes' [-1, 1]."""
    return torch.tensor([1.0 / cfg.extent[0], 1.0 / cfg.extent[1], 1.0])


def total_variation(plane: Tensor) -> Tensor:
    """Mean squared difference of neighbouring cells along both plane axes."""
    dh = (plane[..., 1:, :] - plane[..., :-1, :]).square().mean()
    dw = (plane[..., :, 1:] - plane[..., :, :-1]).square().mean()
    return dh + dw


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


def space_time_coords(x: Tensor, t: Tensor, scale: Tensor, num_frames: int) -> Tensor:
    """(M, 4) plane coordinates [x, y, z, t] of points ``x`` (..., 3) at integer frames ``t``
    (broadcast to ``x.shape[:-1]``): the position scaled by the covered box, and frame t's
    time row (``align_corners``: frame 0 at -1, frame N-1 at +1)."""
    lead = x.shape[:-1]
    check_times(t, lead)
    rows = max(num_frames, 2)  # a single frame still needs two rows for align_corners
    tc = (t.float() * (2.0 / (rows - 1)) - 1.0).expand(lead).reshape(-1, 1)
    return torch.cat([x.reshape(-1, 3).float() * scale, tc], dim=-1)


def space_time_features(
    spatial: nn.ModuleList, temporal: nn.ModuleList, coords: Tensor, space: Tensor | None = None
) -> Tensor:
    """Per level, the product of the spatial and the time planes' features, concatenated
    channels first: (channels * levels, M) (``space``: the spatial planes' grid of
    ``coords``, where the caller has it already)."""
    if space is None:
        space = plane_grid(coords, SPATIAL_PLANES)
    time = plane_grid(coords, TIME_PLANES)
    return torch.cat(
        [s.lookup(space) * tl.lookup(time) for s, tl in zip(spatial, temporal, strict=True)]
    )


def space_time_regularization(spatial: nn.ModuleList, temporal: nn.ModuleList) -> Tensor:
    """Total variation of the spatial planes and smoothness in time of the time planes."""
    tv = sum(total_variation(level.planes) for level in spatial)
    return tv + sum(torch.diff(lv.planes, dim=-2).square().mean() for lv in temporal)


def dynamic_output(
    lead: torch.Size,
    raw_sigma: Tensor,
    rgb: Tensor,
    flows: tuple[Tensor, Tensor],
    bound: float,
    canonical: Tensor | None = None,
) -> DynamicFieldOutput:
    """The decoders' raw outputs, flat, as a :class:`DynamicFieldOutput` of leading shape
    ``lead``: colour through a sigmoid, each flow component bounded by ``bound * tanh``."""
    flow_fw, flow_bw = flows
    return DynamicFieldOutput(
        raw_sigma=raw_sigma.reshape(lead),
        rgb=torch.sigmoid(rgb).reshape(*lead, 3),
        scene_flow_fw=(bound * torch.tanh(flow_fw)).reshape(*lead, 3),
        scene_flow_bw=(bound * torch.tanh(flow_bw)).reshape(*lead, 3),
        canonical=None if canonical is None else canonical.reshape(*lead, 3),
    )


class PlaneStaticField(nn.Module):
    """Time-invariant plane field: NDC position (and NDC ray direction) -> raw sigma, rgb."""

    #: geometry features passed from the density decoder to the colour decoder
    GEO_FEATURES = 15

    def __init__(self, cfg: PlaneFieldConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.levels = nn.ModuleList(
            PlaneStack(SPATIAL_PLANES, (r, r), cfg.channels, "uniform") for r in cfg.resolutions
        )
        feat = cfg.channels * cfg.levels
        # the image plane starts constant: cells no training ray reaches stay neutral, where
        # random features would show as noise in views that do reach them
        r = cfg.image_resolution
        self.image = PlaneStack(SPATIAL_PLANES[:1], (r, r), cfg.channels, "ones") if r else None
        feat += cfg.channels if r else 0
        self.density = _mlp(feat, cfg.hidden, 1 + self.GEO_FEATURES, 1)
        dir_dim = 0
        if cfg.use_viewdir:
            self.dir_encoding = PositionalEncoding(cfg.dir_freqs)
            dir_dim = self.dir_encoding.out_dim
        self.color = _mlp(self.GEO_FEATURES + dir_dim, cfg.hidden, 3, 1)
        # not persistent: it follows from the config, which the checkpoint keeps
        self.register_buffer("scale", _extent_scale(cfg), persistent=False)

    def grid_parameters(self) -> list[nn.Parameter]:
        image = [] if self.image is None else [self.image.planes]
        return [level.planes for level in self.levels] + image

    def regularization(self) -> Tensor:
        """Total variation of the spatial planes (and the image plane), summed over levels."""
        return sum(total_variation(p) for p in self.grid_parameters())

    def forward(self, x: Tensor, d: Tensor | None = None) -> StaticFieldOutput:
        """Same contract as :meth:`nsff_core.model.fields.StaticField.forward`."""
        lead = x.shape[:-1]
        coords = x.reshape(-1, 3).float() * self.scale
        grid = plane_grid(coords, SPATIAL_PLANES)
        parts = [level.lookup(grid) for level in self.levels]
        if self.image is not None:
            parts.append(self.image.lookup(grid[:1]))
        feat = torch.cat(parts).t()
        raw_sigma, geo = self.density(feat).split([1, self.GEO_FEATURES], dim=-1)
        if self.cfg.use_viewdir:
            if d is None:
                raise ValueError("PlaneStaticField with use_viewdir=True needs the ray directions")
            d_enc = self.dir_encoding(d)
            d_enc = d_enc.expand(*lead, d_enc.shape[-1]).reshape(-1, d_enc.shape[-1])
            geo = torch.cat([geo, d_enc.to(geo.dtype)], dim=-1)
        rgb = torch.sigmoid(self.color(geo))
        return StaticFieldOutput(raw_sigma=raw_sigma.reshape(lead), rgb=rgb.reshape(*lead, 3))


class PlaneDynamicField(nn.Module):
    """Time-varying plane field: NDC position and frame t -> raw sigma, rgb, scene flow fw/bw."""

    def __init__(self, cfg: PlaneFieldConfig, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise ConfigError(f"PlaneDynamicField needs num_frames >= 1, got {num_frames}")
        self.cfg = cfg
        self.num_frames = num_frames
        rows = max(num_frames, 2)  # a single frame still needs two rows for align_corners
        self.levels = nn.ModuleList(
            PlaneStack(SPATIAL_PLANES, (r, r), cfg.channels, "uniform")
            for r in cfg.dynamic_resolutions
        )
        self.time_levels = nn.ModuleList(
            PlaneStack(TIME_PLANES, (rows, r), cfg.channels, "ones")
            for r in cfg.dynamic_resolutions
        )
        self.decoder = _mlp(cfg.channels * cfg.dynamic_levels, cfg.hidden, 1 + 3 + 3 + 3, 2)
        self.register_buffer("scale", _extent_scale(cfg), persistent=False)

    def grid_parameters(self) -> list[nn.Parameter]:
        return [level.planes for level in [*self.levels, *self.time_levels]]

    def regularization(self) -> Tensor:
        """Total variation of the spatial planes and smoothness in time of the time planes."""
        return space_time_regularization(self.levels, self.time_levels)

    def forward(self, x: Tensor, t: Tensor) -> DynamicFieldOutput:
        """Same contract as :meth:`nsff_core.model.fields.DynamicField.forward` (integer ``t``)."""
        coords = space_time_coords(x, t, self.scale, self.num_frames)
        feat = space_time_features(self.levels, self.time_levels, coords).t()
        raw_sigma, rgb, flow_fw, flow_bw = self.decoder(feat).split([1, 3, 3, 3], dim=-1)
        return dynamic_output(x.shape[:-1], raw_sigma, rgb, (flow_fw, flow_bw), self.cfg.flow_scale)

    def at_times(self, x: Tensor, t: Tensor, neighbours: bool = False) -> DynamicFieldOutput:
        """Query per-ray samples ``x`` (B, S, 3) at one integer frame per ray ``t`` (B,)
        (``neighbours``: as :meth:`nsff_core.model.fields.DynamicField.at_times`)."""
        return self(x, t[:, None])


def _largest_texture(rows: int, channels: int) -> int:
    """The largest ``grid_frame_texture`` whose texture of ``rows`` frames stays within
    :data:`~nsff_core.config.MAX_GRID_FEATURES`."""
    return math.isqrt(MAX_GRID_FEATURES // (rows * channels))


class PlaneDeformDynamicField(nn.Module):
    """Time-varying plane field that keeps a mover's shape: a canonical field warped per frame.

    ``train.grid_dynamic: deform``. A point x at frame t reads a time-invariant canonical field
    (spatial planes only, ``dynamic_levels`` resolutions) at ``x + offset(x, t)``; the offset
    and the two scene flows are decoded from a coarse space-time plane field (the planes of
    :class:`PlaneDynamicField` at ``motion_levels`` resolutions ``finest / 2^k``, k < levels,
    ``finest`` = ``motion_resolution`` or the base resolution: motion is smoother than shape).
    A mover's appearance is then learned once, from every frame it is seen in, and each frame
    only has to find where it is, where the factorised space-time feature of
    :class:`PlaneDynamicField` has to rebuild the shape per frame from products of per-axis
    profiles (what smears a tumbling cube or a walking figure there).

    Two options give the canonical decoder what a warp of a few tens of cells cannot express
    (a walker's legs and arms move apart inside one warp cell):

    - ``frame_code`` > 0: a learned code per frame, appended to the canonical features (the
      "ambient" code of HyperNeRF, Park et al. 2021): the decoder may change density and colour
      per frame where the warp does not explain a change;
    - ``detail_levels`` > 0: space-time planes (those of :class:`PlaneDynamicField`) read at
      the *canonical* position and the frame, appended to the canonical features: per-frame
      detail that moves with the warp.

    Both start neutral (codes at zero, detail time planes at one), so the field starts
    time-invariant either way.

    The offset's output layer starts at zero, so at the start the field is time-invariant,
    like :class:`PlaneDynamicField`'s. Same outputs and interface as that class.
    """

    #: feature channels of the per-frame texture of ``frame_texture``
    TEXTURE_CHANNELS = 4

    def __init__(self, cfg: PlaneFieldConfig, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise ConfigError(f"PlaneDeformDynamicField needs num_frames >= 1, got {num_frames}")
        self.cfg = cfg
        self.num_frames = num_frames
        rows = max(num_frames, 2)
        motion_res = cfg.motion_resolutions
        self.motion = nn.ModuleList(
            PlaneStack(SPATIAL_PLANES, (r, r), cfg.channels, "uniform") for r in motion_res
        )
        self.motion_time = nn.ModuleList(
            PlaneStack(TIME_PLANES, (rows, r), cfg.channels, "ones") for r in motion_res
        )
        self.motion_decoder = _mlp(cfg.channels * len(motion_res), cfg.hidden, 3 + 3 + 3, 1)
        last = self.motion_decoder[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # offset rows: zero, so the warp starts as the identity
            last.weight[:3].zero_()
            last.bias[:3].zero_()
        self.levels = nn.ModuleList(
            PlaneStack(SPATIAL_PLANES, (r, r), cfg.channels, "uniform")
            for r in cfg.dynamic_resolutions
        )
        detail_res = cfg.detail_resolutions
        self.detail = nn.ModuleList(
            PlaneStack(SPATIAL_PLANES, (r, r), cfg.channels, "uniform") for r in detail_res
        )
        self.detail_time = nn.ModuleList(
            PlaneStack(TIME_PLANES, (rows, r), cfg.channels, "ones") for r in detail_res
        )
        # one code per frame row, zero at the start (the decoder then ignores it); none at
        # frame_code 0, so that checkpoints from before the option load unchanged
        self.frame_codes = (
            nn.Parameter(torch.zeros(rows, cfg.frame_code)) if cfg.frame_code else None
        )
        feat = cfg.channels * (cfg.dynamic_levels + cfg.detail_levels) + cfg.frame_code
        self.decoder = _mlp(feat, cfg.hidden, 1 + 3, 2)
        # per-frame colour texture: (1, C, frames, r, r), zero at the start (no change to the
        # colour), mapped linearly onto the colour's logits; none at frame_texture 0
        r = cfg.frame_texture
        texture_features = self.TEXTURE_CHANNELS * rows * r * r
        if texture_features > MAX_GRID_FEATURES:
            raise ConfigError(
                f"train.grid_frame_texture {r} over {num_frames} frames would learn "
                f"{texture_features:,} features, more than the {MAX_GRID_FEATURES:,} allowed "
                f"({MAX_GRID_FEATURES * 4 // 2**30} GiB of float32 before gradients and optimiser "
                f"state); lower grid_frame_texture to at most "
                f"{_largest_texture(rows, self.TEXTURE_CHANNELS)} or train fewer frames"
            )
        self.texture = (
            nn.Parameter(torch.zeros(1, self.TEXTURE_CHANNELS, rows, r, r)) if r else None
        )
        self.texture_out = nn.Linear(self.TEXTURE_CHANNELS, 3, bias=False) if r else None
        # the texture's term of the raw density (texture_density); none otherwise, so that
        # checkpoints without it load unchanged
        self.texture_sigma = (
            nn.Linear(self.TEXTURE_CHANNELS, 1, bias=False) if r and cfg.texture_density else None
        )
        self.register_buffer("scale", _extent_scale(cfg), persistent=False)

    def grid_parameters(self) -> list[nn.Parameter]:
        stacks = [*self.levels, *self.motion, *self.motion_time, *self.detail, *self.detail_time]
        codes = [] if self.frame_codes is None else [self.frame_codes]
        texture = [] if self.texture is None else [self.texture]
        return [level.planes for level in stacks] + codes + texture

    def regularization(self) -> Tensor:
        """Total variation of the spatial planes and smoothness in time of the time planes
        (the frame codes are not regularised)."""
        tv = sum(total_variation(level.planes) for level in self.levels)
        tv = tv + space_time_regularization(self.motion, self.motion_time)
        if self.cfg.detail_levels:
            tv = tv + space_time_regularization(self.detail, self.detail_time)
        return tv

    def forward(self, x: Tensor, t: Tensor, detach_texture: bool = False) -> DynamicFieldOutput:
        """Same contract as :meth:`nsff_core.model.fields.DynamicField.forward` (integer ``t``);
        ``detach_texture``: the frame texture is read without gradient into its cells."""
        coords = space_time_coords(x, t, self.scale, self.num_frames)
        motion = space_time_features(self.motion, self.motion_time, coords).t()
        offset, flow_fw, flow_bw = self.motion_decoder(motion).split([3, 3, 3], dim=-1)
        canonical = coords[:, :3] + offset
        grid = plane_grid(canonical, SPATIAL_PLANES)
        parts = [level.lookup(grid) for level in self.levels]
        if self.cfg.detail_levels:
            warped = torch.cat([canonical, coords[:, 3:]], dim=-1)
            parts.append(space_time_features(self.detail, self.detail_time, warped, grid))
        if self.frame_codes is not None:
            parts.append(self.frame_codes[t.expand(x.shape[:-1]).reshape(-1)].t())
        feat = torch.cat(parts).t()
        raw_sigma, rgb = self.decoder(feat).split([1, 3], dim=-1)
        if self.texture is not None:
            texture = self._texture_features(coords, detach_texture)
            rgb = rgb + self.texture_out(texture)
            if self.texture_sigma is not None:
                # ln 2 - softplus(s): zero at the start (texture zero), at most ln 2 up (twice
                # the density where it is thin), without bound down: a frame carves the
                # silhouette it sees out of the canonical shape rather than adding matter
                # along the whole line of sight of its (x, y) cell
                raw_sigma = raw_sigma + (math.log(2.0) - F.softplus(self.texture_sigma(texture)))
        # the reported canonical coordinates (for the canonical-consistency term only) carry
        # no gradient into the query position: the term is to move the warp onto the scene
        # flow, not the flow (a query at x + f) onto the warp. With its position's gradient,
        # an identity warp makes the term |f|, a pull of the flow to zero.
        reported = coords[:, :3].detach() + offset
        return dynamic_output(
            x.shape[:-1], raw_sigma, rgb, (flow_fw, flow_bw), self.cfg.flow_scale, reported
        )

    def _texture_features(self, coords: Tensor, detach: bool = False) -> Tensor:
        """(M, TEXTURE_CHANNELS) features of the frame texture at the (x, y) and frame row
        of (M, 4) plane coordinates: trilinear over (x, y, frame), exact at a frame's own row,
        border values outside the box (the lookup of ``grid_sample`` with
        ``align_corners=True``). Done as one ``index_select`` of the 8 corner cells: its
        backward adds into the cells it read, half the time of ``grid_sample``'s 5D backward on
        the CPU at 256 cells (whose cost grows with the whole texture)."""
        assert self.texture is not None
        tex = self.texture.detach() if detach else self.texture
        channels, rows, r = tex.shape[1], tex.shape[2], tex.shape[3]
        grid = safe_grid_coords(coords[:, (0, 1, 3)]).to(tex.dtype)
        size = torch.tensor([r, r, rows], dtype=tex.dtype, device=tex.device)
        pos = (grid + 1.0) * 0.5 * (size - 1)
        low = torch.minimum(pos.detach().floor(), size - 2)  # the last cell owns the far edge
        frac = pos - low
        x0, y0, t0 = low.long().unbind(-1)
        fx, fy, ft = frac.unbind(-1)
        first = (t0 * r + y0) * r + x0
        corners = [(dt * r + dy) * r + dx for dt in (0, 1) for dy in (0, 1) for dx in (0, 1)]
        offsets = torch.tensor(corners, device=tex.device)
        index = (first[None] + offsets[:, None]).reshape(-1)
        weights = torch.stack(
            [wt * wy * wx for wt in (1 - ft, ft) for wy in (1 - fy, fy) for wx in (1 - fx, fx)]
        )  # (8, M), in the order of ``corners``
        cells = tex.view(channels, -1).index_select(1, index).view(channels, 8, -1)
        return (cells * weights).sum(1).t()

    def at_times(self, x: Tensor, t: Tensor, neighbours: bool = False) -> DynamicFieldOutput:
        """Query per-ray samples ``x`` (B, S, 3) at one integer frame per ray ``t`` (B,);
        ``neighbours`` (the warped renders' query) reads the frame texture without gradient
        into it unless ``texture_warped``."""
        return self(x, t[:, None], detach_texture=neighbours and not self.cfg.texture_warped)
