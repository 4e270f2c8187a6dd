"""Static and dynamic radiance fields of NSFF (the nsff_pl MLPs; docs/method.md, Fields).

Both fields take sample positions in **NDC** (``x = o' + z d'``, see :mod:`nsff_core.model.rays`).

- :class:`StaticField`: time-invariant background. ``x`` (and the NDC ray direction ``d'`` when
  ``use_viewdir``) -> raw density (before softplus) and colour in [0, 1].
- :class:`DynamicField`: moving content. ``x`` and a learned per-frame code ``e_t``
  (``nn.Embedding`` indexed by the integer frame ``t``) -> raw density, colour (no view
  dependence) and the scene flow to the neighbouring frames, bounded to ``flow_scale`` per axis.

Every public ``forward`` accepts any leading batch shape ``(...)`` and flattens it internally.
Layers are the ones of nsff_pl; heads that read the same tensor are fused into one ``nn.Linear``
and split by name (the split sizes are spelled out next to each fused layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nsff_core.config import TrainConfig
from nsff_core.errors import ConfigError


@dataclass(frozen=True)
class FieldConfig:
    """Sizes of the static and dynamic MLPs (defaults = nsff_pl; about 1.2 M parameters).

    Defaults come from :class:`~nsff_core.config.TrainConfig`, their one home.
    """

    width: int = TrainConfig.width
    #: number of hidden Linear+ReLU layers in each trunk
    depth: int = TrainConfig.depth
    #: indices of trunk layers whose input is [encoded input, h] instead of h (nsff_pl: 4)
    skips: tuple[int, ...] = (4,)
    #: positional-encoding frequencies of the NDC position (L = 10 -> 63 channels)
    xyz_freqs: int = TrainConfig.xyz_freqs
    #: positional-encoding frequencies of the NDC view direction (L = 4 -> 27 channels)
    dir_freqs: int = TrainConfig.dir_freqs
    #: size of the learned per-frame time code of the dynamic field
    time_dim: int = TrainConfig.time_dim
    #: feed the NDC ray direction to the static colour head
    use_viewdir: bool = TrainConfig.use_viewdir
    #: bound of each scene-flow component, in NDC units per frame
    flow_scale: float = TrainConfig.flow_scale

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ConfigError(f"field width and depth must be >= 1, got {self.width}, {self.depth}")
        bad = [s for s in self.skips if not 0 < s < self.depth]
        if bad:
            raise ConfigError(f"field skips {bad} are not hidden layers 1..{self.depth - 1}")
        if self.xyz_freqs < 0 or self.dir_freqs < 0 or self.time_dim < 1:
            raise ConfigError("field xyz_freqs, dir_freqs must be >= 0 and time_dim >= 1")
        if self.flow_scale < 0:
            raise ConfigError(f"field flow_scale must be >= 0, got {self.flow_scale}")


class PositionalEncoding(nn.Module):
    """gamma(p) = [p, sin(2^0 p), cos(2^0 p), ..., sin(2^(L-1) p), cos(2^(L-1) p)] (no pi).

    Channels are grouped per frequency: for ``in_dim = 3`` and L = 1 the output is
    ``[px, py, pz, sin px, sin py, sin pz, cos px, cos py, cos pz]``.

    Example: p = 0.5, L = 2 -> [0.5, sin 0.5, cos 0.5, sin 1, cos 1]
    = [0.5, 0.479, 0.878, 0.841, 0.540].
    """

    freqs: Tensor

    def __init__(self, num_freqs: int, include_input: bool = True, in_dim: int = 3) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.include_input = include_input
        self.in_dim = in_dim
        freqs = 2.0 ** torch.arange(num_freqs, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)

    @property
    def out_dim(self) -> int:
        """Output channels: in_dim * (include_input + 2 L); 63 for xyz with L = 10."""
        return self.in_dim * (int(self.include_input) + 2 * self.num_freqs)

    def forward(self, p: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        scaled = p[..., None, :] * self.freqs[:, None]  # (..., L, in_dim)
        enc = torch.stack([scaled.sin(), scaled.cos()], dim=-2).flatten(-3)  # (..., 2 L in_dim)
        return torch.cat([p, enc], dim=-1) if self.include_input else enc


class SkipMLP(nn.Module):
    """ReLU MLP of ``depth`` Linear layers of ``width``; layer i in ``skips`` reads [input, h].

    (M, in_dim) -> (M, width). With depth 8 and skips (4,) this is the NeRF trunk: layer 4 (the
    fifth) has ``in_dim + width`` inputs.
    """

    def __init__(self, in_dim: int, width: int, depth: int, skips: tuple[int, ...]) -> None:
        super().__init__()
        self.skips = frozenset(skips)
        self.layers = nn.ModuleList(
            nn.Linear(in_dim if i == 0 else width + (in_dim if i in self.skips else 0), width)
            for i in range(depth)
        )

    def forward(self, inputs: Tensor) -> Tensor:
        """(M, in_dim) -> (M, width)."""
        h = inputs
        for i, layer in enumerate(self.layers):
            if i in self.skips:
                h = torch.cat([inputs, h], dim=-1)
            h = torch.relu(layer(h))
        return h


@dataclass
class StaticFieldOutput:
    """Static field at the samples; ``...`` is the leading shape of the query points."""

    #: (...) density before the softplus of the renderer
    raw_sigma: Tensor
    #: (..., 3) colour in [0, 1]
    rgb: Tensor


@dataclass
class DynamicFieldOutput:
    """Dynamic field at the samples at their times; ``...`` is the leading shape of the points."""

    #: (...) density before the softplus of the renderer
    raw_sigma: Tensor
    #: (..., 3) colour in [0, 1] (no view dependence)
    rgb: Tensor
    #: (..., 3) NDC displacement of the point from frame t to t+1, each axis in [-s, s]
    scene_flow_fw: Tensor
    #: (..., 3) NDC displacement of the point from frame t to t-1, each axis in [-s, s]
    scene_flow_bw: Tensor
    #: (..., 3) where the point reads a time-invariant canonical field (grid coordinates), for
    #: fields that warp one (``grid_dynamic: deform``); None for the others. Its gradient
    #: reaches the warp only, not the query position
    canonical: Tensor | None = None


def check_times(t: Tensor, lead: torch.Size) -> None:
    """Raise ValueError unless frame indices ``t`` broadcast to the points' leading shape."""
    try:
        ok = torch.broadcast_shapes(t.shape, lead) == lead
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"times of shape {tuple(t.shape)} do not broadcast to {tuple(lead)}")


class StaticField(nn.Module):
    """Time-invariant field: NDC position (and NDC ray direction) -> raw sigma, rgb."""

    def __init__(self, cfg: FieldConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.width
        self.xyz_encoding = PositionalEncoding(cfg.xyz_freqs)
        self.trunk = SkipMLP(self.xyz_encoding.out_dim, width, cfg.depth, cfg.skips)
        # fused heads on the trunk output: [raw sigma (1), feature (width)], feature has no ReLU
        self.sigma_feature = nn.Linear(width, 1 + width)
        if cfg.use_viewdir:
            self.dir_encoding = PositionalEncoding(cfg.dir_freqs)
            self.view_layer = nn.Linear(width + self.dir_encoding.out_dim, width)
        self.rgb_head = nn.Linear(width, 3)

    def forward(self, x: Tensor, d: Tensor | None = None) -> StaticFieldOutput:
        """Query the field.

        Args:
            x: (..., 3) NDC sample positions.
            d: NDC ray directions d' (not normalised), broadcastable to x, e.g. (R, 1, 3) for
                x of shape (R, S, 3); it is encoded before broadcasting. Required when
                ``cfg.use_viewdir``, ignored otherwise.

        Returns:
            raw_sigma (...), rgb (..., 3).
        """
        lead = x.shape[:-1]
        h = self.trunk(self.xyz_encoding(x.reshape(-1, 3)))
        raw_sigma, feature = self.sigma_feature(h).split([1, self.cfg.width], dim=-1)
        if self.cfg.use_viewdir:
            if d is None:
                raise ValueError("StaticField with use_viewdir=True needs the ray directions d")
            d_enc = self.dir_encoding(d)
            d_enc = d_enc.expand(*lead, d_enc.shape[-1]).reshape(-1, d_enc.shape[-1])
            feature = torch.relu(self.view_layer(torch.cat([feature, d_enc], dim=-1)))
        rgb = torch.sigmoid(self.rgb_head(feature))
        return StaticFieldOutput(raw_sigma=raw_sigma.reshape(lead), rgb=rgb.reshape(*lead, 3))


class DynamicField(nn.Module):
    """Time-varying field: NDC position + frame code e_t -> raw sigma, rgb, scene flow fw/bw."""

    def __init__(self, cfg: FieldConfig, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise ConfigError(f"DynamicField needs num_frames >= 1, got {num_frames}")
        self.cfg = cfg
        self.num_frames = num_frames
        width = cfg.width
        self.xyz_encoding = PositionalEncoding(cfg.xyz_freqs)
        self.time_embedding = nn.Embedding(num_frames, cfg.time_dim)
        self.trunk = SkipMLP(self.xyz_encoding.out_dim + cfg.time_dim, width, cfg.depth, cfg.skips)
        self.feature = nn.Linear(width, width)  # no activation, as in nsff_pl
        # fused heads on the feature: [raw sigma (1), rgb (3), flow fw (3), flow bw (3)]
        self.heads = nn.Linear(width, 1 + 3 + 3 + 3)

    def forward(self, x: Tensor, t: Tensor) -> DynamicFieldOutput:
        """Query the field at points ``x`` and integer frames ``t``.

        Args:
            x: (..., 3) NDC sample positions.
            t: integer frame indices in [0, num_frames), broadcastable to ``x.shape[:-1]``
                (right-aligned, e.g. (R, 1) for x of shape (R, S, 3)). The codes are looked up
                before broadcasting.

        Returns:
            raw_sigma (...), rgb (..., 3), scene_flow_fw (..., 3), scene_flow_bw (..., 3).
        """
        lead = x.shape[:-1]
        check_times(t, lead)
        code = self.time_embedding(t)
        code = code.expand(*lead, code.shape[-1]).reshape(-1, code.shape[-1])
        h = self.trunk(torch.cat([self.xyz_encoding(x.reshape(-1, 3)), code], dim=-1))
        raw_sigma, rgb, flow_fw, flow_bw = self.heads(self.feature(h)).split([1, 3, 3, 3], dim=-1)
        scale = self.cfg.flow_scale
        return DynamicFieldOutput(
            raw_sigma=raw_sigma.reshape(lead),
            rgb=torch.sigmoid(rgb).reshape(*lead, 3),
            scene_flow_fw=(scale * torch.tanh(flow_fw)).reshape(*lead, 3),
            scene_flow_bw=(scale * torch.tanh(flow_bw)).reshape(*lead, 3),
        )

    def at_times(self, x: Tensor, t: Tensor, neighbours: bool = False) -> DynamicFieldOutput:
        """Query per-ray samples ``x`` (B, S, 3) at one integer frame per ray ``t`` (B,).

        Equivalent to ``self(x, t[:, None])``; outputs have leading shape (B, S).
        ``neighbours``: the query of a render warped to the neighbouring frames (the same
        outputs here; a field may train some of its parameters on its own frames only).
        """
        return self(x, t[:, None])
