"""Volume rendering of NSFF: samples, the static/dynamic composite, warped renders at t +- 1.

Everything here works on NDC rays (``x = o' + z d'``, z in [0, 1], z = 1 is infinity; see
:mod:`nsff_core.model.rays`) and "depth" is that ray parameter z. The method is explained in
docs/method.md, "Rendering"; the pieces:

- :func:`sample_along_rays`, :func:`ray_deltas`, :func:`alphas_from_sigma`: samples and opacities
  (intervals are in z, not scaled by |d'|, and the last one is 100 static / 1e-3 dynamic).
- :func:`volume_weights`, :func:`composite_weights`, :func:`composite_rgb`: the classic NeRF
  weights and the NeRF-W "addition" composite of static and dynamic; with
  :func:`transmittance_after` a ray can be composited in runs of samples (time interpolation,
  :mod:`nsff_core.model.interp`, does so plane run by plane run); :func:`over_background`.
- :func:`neighbour_frames`, :func:`disocclusion`: helpers of the warped renders.
- :func:`rendered_correspondences`: 3D points and their scene-flow targets.
- :func:`render_rays`: the whole pipeline on a batch of rays (a :class:`RenderOutput`, whose
  per-ray images are a :class:`RenderImage`); :func:`render_in_chunks` for images.

Compositing always runs in float32 (field outputs are cast up), so the renderer can be called
under ``torch.autocast`` with bfloat16 MLPs.

Not done here: the test-time visibility trick of nsff_pl's eval (dynamic density of
samples outside the frame-t camera frustum set to -10). It needs the frame-t projection from
:mod:`nsff_core.model.rays` and belongs in the inference path, as a mask on the dynamic raw density.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nsff_core.config import TrainConfig
from nsff_core.errors import ConfigError

from .fields import DynamicField, DynamicFieldOutput, StaticField


@dataclass(frozen=True)
class RenderConfig:
    """Ray sampling and compositing settings (defaults = nsff_pl; the sample count and density
    noise come from :class:`~nsff_core.config.TrainConfig`)."""

    #: samples per ray, linear in the NDC ray parameter z in [0, 1]
    num_samples: int = TrainConfig.num_samples
    #: stratified jitter of the samples within their bins (training only)
    perturb: bool = True
    #: std of the Gaussian noise added to raw densities before the softplus (training only)
    noise_std: float = TrainConfig.noise_std
    #: scene flow is set to 0 at samples with z > z_far
    z_far: float = 0.95
    #: length of the last sample interval of the static field (nearly opaque background)
    static_last_delta: float = 100.0
    #: length of the last sample interval of the dynamic field (last sample nearly transparent)
    dynamic_last_delta: float = 1e-3
    #: grey level behind the dynamic-only image
    dynamic_background: float = 0.8
    #: training: the warped renders (photometric and cycle terms) on every k-th ray only
    warp_every: int = 1

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ConfigError(f"render num_samples must be >= 2, got {self.num_samples}")
        if self.noise_std < 0:
            raise ConfigError(f"render noise_std must be >= 0, got {self.noise_std}")
        if self.static_last_delta <= 0 or self.dynamic_last_delta <= 0:
            raise ConfigError("render last deltas must be > 0")
        if self.warp_every < 1:
            raise ConfigError(f"render warp_every must be >= 1, got {self.warp_every}")


# ---------------------------------------------------------------------------------------------
# Samples and opacities


def sample_along_rays(
    num_rays: int,
    num_samples: int,
    perturb: bool,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """NDC ray parameters z (R, S): linear in [0, 1], optionally jittered within bins.

    Without jitter z_i = i / (S - 1). With jitter z_i is uniform in its bin, whose edges are the
    midpoints between the regular samples (the first and last bins are half bins ending at 0
    and 1), so z stays sorted and inside [0, 1].

    Example (S = 3): regular z = [0, 0.5, 1]; jittered z_0 ~ U[0, 0.25], z_1 ~ U[0.25, 0.75],
    z_2 ~ U[0.75, 1].

    ``generator`` must live on ``device``.
    """
    z = torch.linspace(0.0, 1.0, num_samples, device=device).expand(num_rays, num_samples)
    if not perturb:
        return z.contiguous()
    mids = 0.5 * (z[:, 1:] + z[:, :-1])
    lower = torch.cat([z[:, :1], mids], dim=-1)
    upper = torch.cat([mids, z[:, -1:]], dim=-1)
    u = torch.rand(num_rays, num_samples, device=device, generator=generator)
    return lower + (upper - lower) * u


def ray_deltas(z: Tensor, last_delta: float) -> Tensor:
    """Interval lengths delta_i = z_{i+1} - z_i in the NDC ray parameter, (..., S) -> (..., S).

    The last interval is ``last_delta`` (100 for the static field, 1e-3 for the dynamic one).
    Not multiplied by |d'| (as nsff_pl).

    Example: z = [0, 0.5, 1], last_delta = 100 -> [0.5, 0.5, 100].
    """
    last = torch.full_like(z[..., :1], last_delta)
    return torch.cat([z[..., 1:] - z[..., :-1], last], dim=-1)


def alphas_from_sigma(
    raw_sigma: Tensor,
    deltas: Tensor,
    noise_std: float = 0.0,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Opacity alpha_i = 1 - exp(-softplus(sigma_i + eps_i) delta_i), shapes (..., S).

    eps_i ~ N(0, noise_std^2) is drawn only when ``training``.

    Example: sigma = 0, delta = 1 -> softplus(0) = ln 2 -> alpha = 1 - exp(-ln 2) = 0.5.
    """
    if training and noise_std > 0:
        noise = torch.randn(
            raw_sigma.shape, device=raw_sigma.device, dtype=raw_sigma.dtype, generator=generator
        )
        raw_sigma = raw_sigma + noise_std * noise
    return -torch.expm1(-F.softplus(raw_sigma) * deltas)


# ---------------------------------------------------------------------------------------------
# Weights and colour


#: the factors of :func:`_exclusive_cumprod` are at least this: a sample whose clear share
#: 1 - alpha is below it is opaque either way, and the product's gradient needs no zero test
CLEAR_MIN = 1e-10


class _Cumprod(torch.autograd.Function):
    """``torch.cumprod`` along the last axis of factors that are never 0, with a backward that
    needs no host synchronisation (torch's own tests the factors for zeros, a device-to-host
    read per call on a GPU). Forward and gradient are torch's for such factors:
    ``grad_i = sum_{k >= i} g_k out_k / x_i``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = torch.cumprod(x, dim=-1)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, out = ctx.saved_tensors
        return (grad * out).flip(-1).cumsum(-1).flip(-1) / x


def _exclusive_cumprod(x: Tensor, start: Tensor | None = None) -> Tensor:
    """[s, s x_0, s x_0 x_1, ...] along the last axis; s = ``start`` (...,), or 1 if None.
    Factors below :data:`CLEAR_MIN` count as that."""
    factors = torch.cat([torch.ones_like(x[..., :1]), x[..., :-1].clamp_min(CLEAR_MIN)], dim=-1)
    out = _Cumprod.apply(factors)
    return out if start is None else start[..., None] * out


def volume_weights(alpha: Tensor, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Classic NeRF weights w_i = alpha_i T_i with T_i = T_start prod_{j<i} (1 - alpha_j).

    Args:
        alpha: (..., S) opacities.
        start: (...,) transmittance in front of the first sample (default 1). Compositing a ray
            in consecutive runs of samples passes the previous run's
            :func:`transmittance_after` here.

    Returns:
        (weights (..., S), transmittance (..., S)).

    Example: alpha = [0.5, 0.5, 1] -> T = [1, 0.5, 0.25], w = [0.5, 0.25, 0.25]; the same
    samples in two runs, [0.5] then [0.5, 1] with start = 0.5, give the same weights.
    """
    transmittance = _exclusive_cumprod(1.0 - alpha, start)
    return alpha * transmittance, transmittance


def transmittance_after(transmittance: Tensor, *alphas: Tensor) -> Tensor:
    """Transmittance behind the last sample, T_{S-1} prod_k (1 - alpha_k,S-1): (..., S) -> (...).

    ``alphas`` are the (..., S) opacities composited at each sample (one for
    :func:`volume_weights`; static and dynamic for :func:`composite_weights`).

    Example: alpha = [0.5, 0.5] -> T = [1, 0.5] -> 0.5 (1 - 0.5) = 0.25.
    """
    clear = 1.0 - alphas[0][..., -1]
    for alpha in alphas[1:]:
        clear = clear * (1.0 - alpha[..., -1])
    return transmittance[..., -1] * clear


class CompositeWeights(NamedTuple):
    """Weights of the static/dynamic composite, each (..., S)."""

    #: w_s,i = alpha_s,i T_i
    static: Tensor
    #: w_d,i = alpha_d,i T_i
    dynamic: Tensor
    #: w_i = alpha_i T_i with alpha_i = 1 - (1 - alpha_s,i)(1 - alpha_d,i)
    total: Tensor
    #: T_i = prod_{j<i} (1 - alpha_j)
    transmittance: Tensor


def composite_weights(
    alpha_static: Tensor, alpha_dynamic: Tensor, start: Tensor | None = None
) -> CompositeWeights:
    """NeRF-W "addition" composite of a static and a dynamic field along rays.

    alpha_i = 1 - (1 - a_s,i)(1 - a_d,i), T_i = T_start prod_{j<i} (1 - alpha_j),
    w_s,i = a_s,i T_i, w_d,i = a_d,i T_i, w_i = alpha_i T_i. Note w_s + w_d >= w: the colour
    uses w_s and w_d, the depth uses w.

    Example: a_s = [0.5, 0.5], a_d = [0, 0.5] -> alpha = [0.5, 0.75], T = [1, 0.5],
    w_s = [0.5, 0.25], w_d = [0, 0.25], w = [0.5, 0.375].

    Args:
        alpha_static, alpha_dynamic: (..., S) opacities.
        start: (...,) transmittance in front of the first sample (default 1), as in
            :func:`volume_weights`.
    """
    clear = (1.0 - alpha_static) * (1.0 - alpha_dynamic)
    transmittance = _exclusive_cumprod(clear, start)
    return CompositeWeights(
        static=alpha_static * transmittance,
        dynamic=alpha_dynamic * transmittance,
        total=(1.0 - clear) * transmittance,
        transmittance=transmittance,
    )


def composite_rgb(
    static_weights: Tensor, static_rgb: Tensor, dynamic_weights: Tensor, dynamic_rgb: Tensor
) -> Tensor:
    """C = sum_i w_s,i c_s,i + sum_i w_d,i c_d,i; weights (..., S), colours (..., S, 3) -> (..., 3).

    Example: w_s = [0.5, 0.25], c_s = [red, red], w_d = [0, 0.25], c_d = [-, blue]
    -> C = (0.75, 0, 0.25).
    """
    return (static_weights[..., None] * static_rgb).sum(-2) + (
        dynamic_weights[..., None] * dynamic_rgb
    ).sum(-2)


def over_background(rgb: Tensor, coverage: Tensor, grey: float) -> Tensor:
    """Colour (..., 3) of partial coverage (...,) put over a uniform grey: rgb + grey (1 - cov).

    Example: rgb = (0.5, 0, 0) from coverage 0.5 over grey 0.8 -> (0.9, 0.4, 0.4).
    """
    return rgb + grey * (1.0 - coverage[..., None])


def zero_far_flow(flow: Tensor, z: Tensor, z_far: float) -> Tensor:
    """Scene flow (..., S, 3) set to 0 at samples whose ray parameter z (..., S) exceeds z_far."""
    return torch.where((z > z_far)[..., None], torch.zeros_like(flow), flow)


# ---------------------------------------------------------------------------------------------
# Warped renders and correspondences


def neighbour_frames(t: Tensor, step: int, num_frames: int) -> tuple[Tensor, Tensor]:
    """Frame t + step clamped to [0, N - 1], and whether it exists (unclamped), both (R,).

    Example: t = [0, 5, 9], step = +1, N = 10 -> ([1, 6, 9], [True, True, False]).
    """
    shifted = t + step
    valid = (shifted >= 0) & (shifted <= num_frames - 1)
    return shifted.clamp(0, num_frames - 1), valid


def disocclusion(warped_dynamic_weights: Tensor, dynamic_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Occlusion indicators from the change of dynamic weights under warping (stop-gradient).

    Per ray D = 1 - |sum_i (w'_d,i - w_d,i)|, per sample D_i = 1 - |w'_d,i - w_d,i|.

    Example: w_d = [0.5, 0], w'_d = [0.2, 0.1] -> D_i = [0.7, 0.9], D = 1 - |-0.2| = 0.8.

    Args:
        warped_dynamic_weights, dynamic_weights: (..., S).

    Returns:
        (per ray (...), per sample (..., S)), both detached.
    """
    diff = (warped_dynamic_weights - dynamic_weights).detach()
    return 1.0 - diff.sum(-1).abs(), 1.0 - diff.abs()


def rendered_correspondences(
    weights: Tensor, points: Tensor, scene_flow_fw: Tensor, scene_flow_bw: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Expected surface point and where it moves: X = sum w_i x_i, X_fw = X + sum w_i f_fw,i.

    All in NDC, with the composite weights w (not the dynamic ones). Weights (..., S), points
    and flows (..., S, 3) -> (X, X_fw, X_bw), each (..., 3).

    Example: w = [0.25, 0.75], x = [(0,0,0), (0,0,1)], f_fw = [(1,0,0), (0,0,0)]
    -> X = (0, 0, 0.75), X_fw = (0.25, 0, 0.75).
    """
    w = weights[..., None]
    surface = (w * points).sum(-2)
    return surface, surface + (w * scene_flow_fw).sum(-2), surface + (w * scene_flow_bw).sum(-2)


@dataclass
class WarpedRender:
    """Frame t rendered with its dynamic content moved to the neighbour frame.

    The dynamic field is queried at x_i + f_i with the neighbour's time code and composited with
    the static density and colour of frame t. Shapes: R rays, S samples. The field query and
    what comes from it (``rgb`` to ``disocclusion_samples``) cover the R' rays ``rays`` of the
    batch (all R when ``rays`` is None; :attr:`RenderConfig.warp_every`); :meth:`on_rays`
    selects the same rays from any (R, ...) tensor of the batch.
    """

    #: (R,) long, neighbour frame t +- 1 clamped to [0, N - 1]
    time: Tensor
    #: (R,) bool, False where t +- 1 is outside [0, N - 1] (the first/last frame): mask these
    valid: Tensor
    #: (R, S, 3) warped sample points x_i + f_i (NDC)
    points: Tensor
    #: (R', 3) composite colour
    rgb: Tensor
    #: (R', S) dynamic weights w'_d of the warped render
    dynamic_weights: Tensor
    #: (R', S, 3) warped points moved back by the flow returned at the neighbour time (NDC);
    #: equal to the original points for a cycle-consistent flow
    cycle_points: Tensor
    #: (R',) per-ray disocclusion indicator D (detached)
    disocclusion: Tensor
    #: (R', S) per-sample disocclusion indicator D_i (detached)
    disocclusion_samples: Tensor
    #: (R',) long indices of the rays the field was queried for; None = every ray
    rays: Tensor | None = None
    #: (R', S, 3) canonical coordinates of the warped points at t +- 1 (fields that warp a
    #: canonical field, else None)
    canonical: Tensor | None = None

    def on_rays(self, x: Tensor) -> Tensor:
        """The rows of a per-ray tensor (R, ...) that the warped render covers (R', ...)."""
        return x if self.rays is None else x[self.rays]


@dataclass
class RenderImage:
    """Per-ray outputs of a render, what an image needs (:attr:`RenderOutput.image`; the
    fractional-time render :func:`nsff_core.model.interp.interpolate_rays` returns one too)."""

    #: (R, 3) static + dynamic composite colour
    rgb: Tensor
    #: (R,) expected NDC ray parameter sum_i w_i z_i
    depth: Tensor
    #: (R, 3) static field alone (its own transmittance): the background
    static_rgb: Tensor
    #: (R,) static field alone, expected NDC ray parameter
    static_depth: Tensor
    #: (R, 3) dynamic content over grey: sum_i w_d,i c_d,i + grey (1 - sum_i w_d,i)
    dynamic_rgb: Tensor
    #: (R,) sum_i w_d,i
    dynamicness: Tensor


@dataclass
class RenderOutput:
    """Everything :func:`render_rays` computes for R rays of S samples (NDC throughout)."""

    #: the per-ray images (colour, depth, static alone, dynamic over grey, dynamicness)
    image: RenderImage
    #: (R, 3) expected surface point X = sum_i w_i x_i
    surface_point: Tensor
    #: (R, 3) X + sum_i w_i f_fw,i: where the surface point is at t + 1
    surface_point_fw: Tensor
    #: (R, 3) X + sum_i w_i f_bw,i: where the surface point is at t - 1
    surface_point_bw: Tensor
    #: (R, S) sample ray parameters z
    z: Tensor
    #: (R, S, 3) sample points x_i = o' + z_i d'
    points: Tensor
    #: (R, S) static opacity alpha_s,i
    static_alpha: Tensor
    #: (R, S) dynamic opacity alpha_d,i
    dynamic_alpha: Tensor
    #: (R, S, 3) static colour c_s,i
    static_sample_rgb: Tensor
    #: (R, S, 3) dynamic colour c_d,i
    dynamic_sample_rgb: Tensor
    #: (R, S) composite static weights w_s,i
    static_weights: Tensor
    #: (R, S) composite dynamic weights w_d,i
    dynamic_weights: Tensor
    #: (R, S) composite total weights w_i
    weights: Tensor
    #: (R, S, 3) scene flow to t + 1 (NDC), zero where z > z_far
    scene_flow_fw: Tensor
    #: (R, S, 3) scene flow to t - 1 (NDC), zero where z > z_far
    scene_flow_bw: Tensor
    #: (R, S, 3) canonical coordinates of the samples (fields that warp a canonical field,
    #: else None)
    canonical: Tensor | None = None
    #: render warped to t + 1 (training only, else None)
    fw: WarpedRender | None = None
    #: render warped to t - 1 (training only, else None)
    bw: WarpedRender | None = None


def _warped_render(
    warped: DynamicFieldOutput,
    warped_points: Tensor,
    current: RenderOutput,
    time: Tensor,
    valid: Tensor,
    step: int,
    dynamic_deltas: Tensor,
    noise_std: float,
    z_far: float,
    generator: torch.Generator | None,
    rays: Tensor | None = None,
) -> WarpedRender:
    """Render frame t's samples moved by their scene flow to t + step (step = +-1).

    ``warped_points`` are frame t's sample points plus that flow, for every ray; ``warped`` is
    the dynamic field at those of the rays ``rays`` (None: all) and time ``time`` (the caller
    queries both directions in one pass).
    """
    sel = slice(None) if rays is None else rays
    alpha = alphas_from_sigma(
        warped.raw_sigma.float(), dynamic_deltas[sel], noise_std, training=True, generator=generator
    )
    weights = composite_weights(current.static_alpha[sel], alpha)
    rgb = composite_rgb(
        weights.static, current.static_sample_rgb[sel], weights.dynamic, warped.rgb.float()
    )
    # the flow that leads back to frame t: backward flow at t + 1, forward flow at t - 1
    flow_back = warped.scene_flow_bw if step > 0 else warped.scene_flow_fw
    flow_back = zero_far_flow(flow_back.float(), current.z[sel], z_far)
    per_ray, per_sample = disocclusion(weights.dynamic, current.dynamic_weights[sel])
    return WarpedRender(
        time=time,
        valid=valid,
        points=warped_points,
        rgb=rgb,
        dynamic_weights=weights.dynamic,
        cycle_points=warped_points[sel] + flow_back,
        disocclusion=per_ray,
        disocclusion_samples=per_sample,
        rays=rays,
        canonical=warped.canonical,
    )


def _warped_renders(
    dynamic_field: DynamicField,
    current: RenderOutput,
    t: Tensor,
    dynamic_deltas: Tensor,
    noise_std: float,
    z_far: float,
    generator: torch.Generator | None,
    warp_every: int = 1,
) -> tuple[WarpedRender, WarpedRender]:
    """The renders warped to t + 1 and t - 1, with one dynamic-field pass for both, over every
    ``warp_every``-th ray (rays 0, k, 2k, ...)."""
    time_fw, valid_fw = neighbour_frames(t, +1, dynamic_field.num_frames)
    time_bw, valid_bw = neighbour_frames(t, -1, dynamic_field.num_frames)
    rays = None if warp_every == 1 else torch.arange(0, len(t), warp_every, device=t.device)
    sel = slice(None) if rays is None else rays
    points_fw = current.points + current.scene_flow_fw
    points_bw = current.points + current.scene_flow_bw
    points = torch.cat([points_fw[sel], points_bw[sel]])
    both = dynamic_field.at_times(points, torch.cat([time_fw[sel], time_bw[sel]]), neighbours=True)
    r = len(points) // 2
    fw_out, bw_out = (
        DynamicFieldOutput(
            **{
                k: None if getattr(both, k) is None else getattr(both, k)[sl]
                for k in both.__dataclass_fields__
            }
        )
        for sl in (slice(0, r), slice(r, 2 * r))
    )
    args = (dynamic_deltas, noise_std, z_far, generator, rays)
    fw = _warped_render(fw_out, points_fw, current, time_fw, valid_fw, +1, *args)
    bw = _warped_render(bw_out, points_bw, current, time_bw, valid_bw, -1, *args)
    return fw, bw


def render_rays(
    static_field: StaticField,
    dynamic_field: DynamicField,
    rays_o: Tensor,
    rays_d: Tensor,
    t: Tensor,
    cfg: RenderConfig,
    *,
    training: bool,
    generator: torch.Generator | None = None,
) -> RenderOutput:
    """Render R NDC rays at integer frames ``t`` with the static/dynamic composite.

    Dynamic-field passes over the R x S samples: one at time t, and in training one over 2 R x S
    samples at t + 1 (at the forward-warped points) and at t - 1 (backward-warped). Static MLP: one pass (the static field does not
    move, its density and colour are reused by the warped renders).

    Args:
        static_field, dynamic_field: the two fields (``dynamic_field.num_frames`` = N).
        rays_o, rays_d: (R, 3) NDC ray origins o' and directions d'.
        t: (R,) long frame index of each ray in [0, N).
        cfg: sampling and compositing settings.
        training: jitter samples (``cfg.perturb``), add density noise (``cfg.noise_std``) and
            compute the warped renders ``fw``/``bw``; otherwise deterministic, no warps.
        generator: random generator on the rays' device, for reproducible jitter and noise.
    """
    num_rays = rays_o.shape[0]
    z = sample_along_rays(
        num_rays,
        cfg.num_samples,
        perturb=training and cfg.perturb,
        device=rays_o.device,
        generator=generator,
    ).to(rays_o.dtype)
    points = rays_o[:, None, :] + z[..., None] * rays_d[:, None, :]  # (R, S, 3)

    static = static_field(points, rays_d[:, None, :])
    dynamic = dynamic_field.at_times(points, t)

    noise_std = cfg.noise_std if training else 0.0
    static_deltas = ray_deltas(z, cfg.static_last_delta)
    dynamic_deltas = ray_deltas(z, cfg.dynamic_last_delta)
    static_alpha = alphas_from_sigma(
        static.raw_sigma.float(), static_deltas, noise_std, training, generator
    )
    dynamic_alpha = alphas_from_sigma(
        dynamic.raw_sigma.float(), dynamic_deltas, noise_std, training, generator
    )
    static_sample_rgb = static.rgb.float()
    dynamic_sample_rgb = dynamic.rgb.float()

    weights = composite_weights(static_alpha, dynamic_alpha)
    static_only_weights, _ = volume_weights(static_alpha)
    dynamicness = weights.dynamic.sum(-1)
    dynamic_rgb = over_background(
        (weights.dynamic[..., None] * dynamic_sample_rgb).sum(-2),
        dynamicness,
        cfg.dynamic_background,
    )

    scene_flow_fw = zero_far_flow(dynamic.scene_flow_fw.float(), z, cfg.z_far)
    scene_flow_bw = zero_far_flow(dynamic.scene_flow_bw.float(), z, cfg.z_far)
    surface, surface_fw, surface_bw = rendered_correspondences(
        weights.total, points, scene_flow_fw, scene_flow_bw
    )

    image = RenderImage(
        rgb=composite_rgb(weights.static, static_sample_rgb, weights.dynamic, dynamic_sample_rgb),
        depth=(weights.total * z).sum(-1),
        static_rgb=(static_only_weights[..., None] * static_sample_rgb).sum(-2),
        static_depth=(static_only_weights * z).sum(-1),
        dynamic_rgb=dynamic_rgb,
        dynamicness=dynamicness,
    )
    out = RenderOutput(
        image=image,
        surface_point=surface,
        surface_point_fw=surface_fw,
        surface_point_bw=surface_bw,
        z=z,
        points=points,
        static_alpha=static_alpha,
        dynamic_alpha=dynamic_alpha,
        static_sample_rgb=static_sample_rgb,
        dynamic_sample_rgb=dynamic_sample_rgb,
        static_weights=weights.static,
        dynamic_weights=weights.dynamic,
        weights=weights.total,
        scene_flow_fw=scene_flow_fw,
        scene_flow_bw=scene_flow_bw,
        canonical=dynamic.canonical,
    )
    if training:
        out.fw, out.bw = _warped_renders(
            dynamic_field, out, t, dynamic_deltas, noise_std, cfg.z_far, generator, cfg.warp_every
        )
    return out


# ---------------------------------------------------------------------------------------------
# Chunked rendering

ChunkOutput = TypeVar("ChunkOutput")


def _map_tensors(obj: Any, fn: Callable[[list[Tensor]], Tensor], parts: list[Any]) -> Any:
    """Apply ``fn`` to the matching tensors of ``parts`` (tensors or nested dataclasses)."""
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return fn(parts)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = {
            f.name: _map_tensors(getattr(obj, f.name), fn, [getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(obj)
        }
        return type(obj)(**values)
    raise TypeError(f"cannot concatenate chunks of type {type(obj).__name__}")


def render_in_chunks(
    fn: Callable[[Tensor, Tensor, Tensor], ChunkOutput],
    rays_o: Tensor,
    rays_d: Tensor,
    t: Tensor,
    chunk: int,
    out_device: torch.device | str | None = None,
) -> ChunkOutput:
    """Call ``fn(rays_o, rays_d, t)`` on at most ``chunk`` rays at a time and concatenate.

    ``fn`` returns a tensor or a dataclass of tensors (nested dataclasses and ``None`` fields
    are fine), each with the rays on dim 0. Each chunk's result is moved to ``out_device``
    (e.g. ``"cpu"`` to keep a full image off the GPU) before concatenation. For images, return
    only what is needed, e.g. ``lambda o, d, t: render_rays(..., training=False).image``, and
    call under ``torch.inference_mode()``.

    Args:
        rays_o, rays_d: (R, 3); t: (R,).
        chunk: rays per call (a chunk of rays costs chunk x num_samples field queries).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    parts = []
    for start in range(0, rays_o.shape[0], chunk):
        stop = start + chunk
        part = fn(rays_o[start:stop], rays_d[start:stop], t[start:stop])
        if out_device is not None:
            part = _map_tensors(part, lambda ts: ts[0].to(out_device), [part])
        parts.append(part)
    if not parts:
        raise ValueError("render_in_chunks got no rays")
    return _map_tensors(parts[0], lambda ts: torch.cat(ts, dim=0), parts)
