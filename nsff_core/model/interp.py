"""Rendering at fractional times: time interpolation by splatting (as nsff_pl's ``interpolate``).

A time ``t + dt`` (t an integer frame, 0 < dt < 1) has no time code of its own, so it is rendered
from the two integer frames around it:

1. The camera's rays are sampled deterministically (the regular samples of
   :func:`nsff_core.model.render.sample_along_rays`), so the renders at t and t + 1 share every
   sample position x_{r,s} (ray r, sample plane s at ray parameter z_s). The static field is
   queried once (it does not depend on time), the dynamic field at t and at t + 1.
2. Per sample plane s, every dynamic sample is moved in the **NSFF world** by the fraction of its
   scene flow that brings it to time t + dt::

       X    = world(x)                       (world = ndc_to_world with the training K)
       X_fw = X + dt       * (world(x + f_fw(x, t))     - X)      forward from t
       X_bw = X + (1 - dt) * (world(x + f_bw(x, t + 1)) - X)      backward from t + 1

   Scaling happens in world space, not NDC (NDC is a projective warp, so a fraction of an NDC
   displacement is not the same fraction of the motion). The moved points are projected into
   the rendering camera; ``project(X_fw) - project(X)`` is the 2D flow of the plane, in pixels.
   Subtracting ``project(X)`` rather than the pixel grid makes a zero scene flow an exactly zero
   2D flow, whatever small error ``ndc_to_world``'s epsilon leaves near NDC infinity.
3. The premultiplied dynamic colour and the dynamic opacity ``(alpha_d c_d, alpha_d)`` of each
   plane are forward-splatted along that flow with :func:`nsff_core.model.splat.splat` in ``"average"``
   mode (bilinear splat, normalised by the splatted bilinear weights, as nsff_pl). Splatting the
   premultiplied colour and the opacity *together* means the splatted colour is the
   opacity-weighted average of the colours that land on a pixel, ``c = sum(a c) / sum(a)``,
   and ``a c`` is simply the first splatted channels; no division is needed.
4. Per plane, with the static part taken unsplatted from time t::

       a_d = (1 - dt) a_fw + dt a_bw              dynamic opacity at t + dt
       p_d = (1 - dt) (a c)_fw + dt (a c)_bw      premultiplied dynamic colour
       C_s = p_d + a_st c_st                      (the NeRF-W "addition" colour)
       A_s = 1 - (1 - a_d) (1 - a_st)

   and front-to-back compositing with T = 1 - acc: ``rgb += T C_s``, ``depth += T A_s z_s``,
   ``T *= 1 - A_s``. The auxiliary images follow the integer render: dynamicness
   ``sum T a_d``, dynamic-only ``sum T p_d + grey (1 - dynamicness)``, and the static field
   alone (its own transmittance, at time t: identical to the integer render's). The weights
   come from the integer render's functions (:func:`~nsff_core.model.render.composite_weights`,
   :func:`~nsff_core.model.render.volume_weights`), a run of planes at a time, each run starting at
   the transmittance the previous one left (:func:`~nsff_core.model.render.transmittance_after`).

   With dt -> 0 (or a zero scene flow) the splat is the identity and this is exactly the
   integer render's composite.

Memory: the planes are processed a few at a time (``plane_chunk``, by default as many as keep
one chunk at ~2^20 samples, e.g. 7 planes of a 512 x 288 image; such a chunk peaked at ~0.6 GB
on the CPU with a small field, against ~0.5 GB for the integer render), and the field queries
within a chunk run on ``chunk x num_samples`` points at a time, the same work per call as the
integer render. Cost per frame: one static and two dynamic field passes
over all samples (the integer render: one of each), plus the splatting.

Known limitation of "average" splatting (inherited from NSFF/nsff_pl): where moving content
lands on pixels that also receive samples of empty space that stay put (zero flow), the
average dilutes its opacity (two equal shares: half). The premultiplied colour is diluted by the
same factor, so colours stay right; a thick object spans several planes and stays nearly opaque.

Not done (as nsff_pl): the static part is not splatted (it does not move). Pose and time are
independent here: the camera is used as given, so bullet time (split ``bullet<T>``, see
:mod:`nsff_core.model.paths`) is a camera path with every time equal to T.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from nsff_core.config import RenderSplitConfig

from .rays import get_rays, ndc_to_world, project_points_depth, projection_matrices, rays_to_ndc
from .render import (
    RenderConfig,
    RenderImage,
    alphas_from_sigma,
    composite_rgb,
    composite_weights,
    over_background,
    ray_deltas,
    render_in_chunks,
    sample_along_rays,
    transmittance_after,
    volume_weights,
    zero_far_flow,
)
from .splat import splat

#: times within this distance (frame units) of an integer are rendered at that integer
TIME_TOL = 1e-5
#: default sample budget of one chunk of sample planes (rays x planes)
PLANE_CHUNK_SAMPLES = 2**20
#: moved points are kept this far (in NDC z) before NDC infinity (z = 1), where the world
#: position is undefined; a flow that pushes a point further is clipped there
NDC_Z_MARGIN = 1e-3
#: a moved point at or behind this camera depth (normalised units) is dropped from the splat
MIN_CAMERA_DEPTH = 1e-6


def split_time(time: float, num_frames: int, tol: float = TIME_TOL) -> tuple[int, float]:
    """Integer frame t and fraction dt in [0, 1) of a render time (frame units).

    Times within ``tol`` of an integer snap to it (dt = 0), so float noise in camera-path files
    (2.9999999) does not ask for an interpolation. Interpolating needs frame t + 1, so the last
    frame N - 1 can only be rendered at dt = 0.

    Example: split_time(2.25, 4) = (2, 0.25); split_time(2.9999999, 4) = (3, 0.0).

    Raises:
        ValueError: ``time`` is not finite or outside [0, N - 1].
    """
    time = float(time)
    if not math.isfinite(time) or time < -tol or time > num_frames - 1 + tol:
        raise ValueError(
            f"render time {time!r} is outside [0, {num_frames - 1}] (the scene has "
            f"{num_frames} frames)"
        )
    nearest = round(time)
    if abs(time - nearest) <= tol:
        return int(nearest), 0.0
    t = math.floor(time)
    return int(t), time - t


def _premultiplied(alpha: Tensor, rgb: Tensor) -> Tensor:
    """(R, P) opacity and (R, P, 3) colour -> (R, P, 4) [alpha c, alpha]."""
    return torch.cat([alpha[..., None] * rgb, alpha[..., None]], dim=-1)


def _pixel_flow(
    points: Tensor,
    world: Tensor,
    uv: Tensor,
    scene_flow: Tensor,
    fraction: float,
    projection: Tensor,
    K_ndc: Tensor,
) -> Tensor:
    """2D flow (pixels) of NDC samples moved by ``fraction`` of their scene flow, in world space.

    Args:
        points: (R, P, 3) NDC samples x; ``world`` (R, P, 3) = ndc_to_world(x); ``uv``
            (R, P, 2) = their pixel coordinates in the rendering camera.
        scene_flow: (R, P, 3) NDC scene flow f (to t + 1, or to t from t + 1).
        fraction: dt (forward) or 1 - dt (backward).
        projection: (3, 4) NSFF world -> rendering camera pixels.
        K_ndc: (3, 3) training intrinsics (NDC).

    Returns:
        (R, P, 2) flow ``project(X + fraction (world(x + f) - X)) - uv``; NaN (dropped by the
        splat) where the moved point is not in front of the camera.
    """
    moved = points + scene_flow
    # NDC z >= 1 is at or beyond infinity; keep the target finite (a zero flow stays exact)
    z_limit = torch.clamp(points[..., 2], min=1.0 - NDC_Z_MARGIN)
    moved = torch.cat([moved[..., :2], torch.minimum(moved[..., 2], z_limit)[..., None]], -1)
    target = world + fraction * (ndc_to_world(moved, K_ndc) - world)
    uv_moved, depth = project_points_depth(projection, target)
    flow = uv_moved - uv
    return torch.where((depth > MIN_CAMERA_DEPTH)[..., None], flow, float("nan"))


def _query_planes(
    static_field,
    dynamic_field,
    rays_o: Tensor,
    rays_d: Tensor,
    z: Tensor,
    static_deltas: Tensor,
    dynamic_deltas: Tensor,
    cfg: RenderConfig,
    t: int,
    dt: float,
    projection: Tensor,
    K_ndc: Tensor,
) -> dict[str, Tensor]:
    """Fields at R rays x P sample planes, reduced to what the splat and composite need.

    ``z``, ``static_deltas``, ``dynamic_deltas``: (P,) ray parameters and interval lengths of
    the planes. Returns (R, P, C) tensors: ``static_alpha`` (C = 1, squeezed), ``static_rgb``
    (3), ``fw``/``bw`` (4: premultiplied rgb, alpha at t / t + 1), ``fw_flow``/``bw_flow``
    (2: pixels).
    """
    r, p = rays_o.shape[0], z.shape[0]
    points = rays_o[:, None, :] + z[None, :, None] * rays_d[:, None, :]  # (R, P, 3)
    zz = z.expand(r, p)
    static = static_field(points, rays_d[:, None, :])
    times = torch.full((r,), t, dtype=torch.long, device=rays_o.device)
    dyn_t = dynamic_field.at_times(points, times)
    dyn_t1 = dynamic_field.at_times(points, times + 1)

    static_alpha = alphas_from_sigma(static.raw_sigma.float(), static_deltas.expand(r, p))
    alpha_t = alphas_from_sigma(dyn_t.raw_sigma.float(), dynamic_deltas.expand(r, p))
    alpha_t1 = alphas_from_sigma(dyn_t1.raw_sigma.float(), dynamic_deltas.expand(r, p))
    flow_fw = zero_far_flow(dyn_t.scene_flow_fw.float(), zz, cfg.z_far)
    flow_bw = zero_far_flow(dyn_t1.scene_flow_bw.float(), zz, cfg.z_far)

    world = ndc_to_world(points, K_ndc)
    uv, _ = project_points_depth(projection, world)
    return {
        "static_alpha": static_alpha,
        "static_rgb": static.rgb.float(),
        "fw": _premultiplied(alpha_t, dyn_t.rgb.float()),
        "bw": _premultiplied(alpha_t1, dyn_t1.rgb.float()),
        "fw_flow": _pixel_flow(points, world, uv, flow_fw, dt, projection, K_ndc),
        "bw_flow": _pixel_flow(points, world, uv, flow_bw, 1.0 - dt, projection, K_ndc),
    }


def _splat_planes(values: Tensor, flow: Tensor, hw: tuple[int, int]) -> Tensor:
    """Average-splat every sample plane of an image: values (H*W, P, C) along flow
    (H*W, P, 2) pixels -> (H*W, P, C); the planes are the batch of :func:`splat`."""
    n_planes = values.shape[1]

    def to_planes(x: Tensor) -> Tensor:  # (H*W, P, C) -> (P, C, H, W)
        return x.permute(1, 2, 0).reshape(n_planes, -1, hw[0], hw[1])

    out = splat(to_planes(values), to_planes(flow), mode="average")
    return out.reshape(n_planes, -1, hw[0] * hw[1]).permute(2, 0, 1)


def interpolate_rays(
    static_field,
    dynamic_field,
    cfg: RenderConfig,
    rays_o: Tensor,
    rays_d: Tensor,
    hw: tuple[int, int],
    projection: Tensor,
    K_ndc: Tensor,
    t: int,
    dt: float,
    chunk: int = RenderSplitConfig.chunk,
    plane_chunk: int | None = None,
) -> RenderImage:
    """Render the rays of one image at time t + dt by splatting frames t and t + 1.

    See the module docstring for the method. Deterministic (regular samples, no noise); call
    under ``torch.inference_mode()`` (or ``no_grad``) for images.

    Args:
        static_field, dynamic_field: the fields (``static_field(x, d)``,
            ``dynamic_field.at_times(x, t)``, NDC inputs; the dynamic field needs frame t + 1).
        cfg: the render settings of the fields (samples per ray, last deltas, z_far, grey).
        rays_o, rays_d: (H*W, 3) NDC rays of every pixel of the image, row-major (index
            ``y * W + x``, as :func:`nsff_core.model.rays.get_rays` then
            :func:`~nsff_core.model.rays.rays_to_ndc`).
        hw: (H, W) of the image.
        projection: (3, 4) NSFF world -> pixel coordinates of the rendering camera
            (:func:`nsff_core.model.rays.projection_matrices` of its K and NSFF c2w).
        K_ndc: (3, 3) training intrinsics (the NDC warp).
        t: integer frame, with frame t + 1 in the dynamic field.
        dt: fraction in [0, 1]; 0 reproduces frame t, 1 frame t + 1 (up to the splat).
        chunk: rays per field call for the full ``num_samples`` samples; a call on fewer planes
            takes proportionally more rays (``chunk x num_samples`` points per call).
        plane_chunk: sample planes splatted at once (default: ~2^20 samples per chunk).

    Returns:
        :class:`~nsff_core.model.render.RenderImage` of H*W rays on the rays' device: rgb (H*W, 3),
        depth (H*W,) NDC ray parameter, static_rgb/static_depth (static field alone, time t),
        dynamic_rgb (H*W, 3) dynamic over grey, dynamicness (H*W,).
    """
    h, w = int(hw[0]), int(hw[1])
    n_rays = rays_o.shape[0]
    if n_rays != h * w:
        raise ValueError(f"got {n_rays} rays for an image of {h}x{w}")
    if not 0.0 <= dt <= 1.0:
        raise ValueError(f"dt must be in [0, 1], got {dt}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    last = getattr(dynamic_field, "num_frames", t + 2) - 1
    if t < 0 or t + 1 > last:
        raise ValueError(
            f"interpolating after frame {t} needs frames {t} and {t + 1}, but the dynamic field "
            f"has frames 0..{last}"
        )
    device = rays_o.device
    s_total = cfg.num_samples
    if plane_chunk is None:
        plane_chunk = PLANE_CHUNK_SAMPLES // n_rays
    plane_chunk = max(1, min(s_total, int(plane_chunk)))
    projection = projection.to(device=device, dtype=rays_o.dtype)
    K_ndc = torch.as_tensor(K_ndc, dtype=rays_o.dtype, device=device)

    z_all = sample_along_rays(1, s_total, perturb=False, device=device)[0].to(rays_o.dtype)
    static_deltas_all = ray_deltas(z_all, cfg.static_last_delta)
    dynamic_deltas_all = ray_deltas(z_all, cfg.dynamic_last_delta)

    zeros3 = rays_o.new_zeros(n_rays, 3)
    rgb, dynamic_rgb, static_rgb = zeros3.clone(), zeros3.clone(), zeros3.clone()
    depth, dynamicness, static_depth = (rays_o.new_zeros(n_rays) for _ in range(3))
    transmittance = rays_o.new_ones(n_rays)
    static_transmittance = rays_o.new_ones(n_rays)

    for s0 in range(0, s_total, plane_chunk):
        s1 = min(s0 + plane_chunk, s_total)
        z = z_all[s0:s1]
        n_planes = s1 - s0
        rays_per_call = max(1, chunk * s_total // n_planes)
        parts = [
            _query_planes(
                static_field,
                dynamic_field,
                rays_o[r0 : r0 + rays_per_call],
                rays_d[r0 : r0 + rays_per_call],
                z,
                static_deltas_all[s0:s1],
                dynamic_deltas_all[s0:s1],
                cfg,
                t,
                dt,
                projection,
                K_ndc,
            )
            for r0 in range(0, n_rays, rays_per_call)
        ]
        q = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        del parts

        dyn = 0.0
        if dt < 1.0:  # frame t, splatted forward by dt
            dyn = (1.0 - dt) * _splat_planes(q["fw"], q["fw_flow"], (h, w))
        if dt > 0.0:  # frame t + 1, splatted backward by 1 - dt
            dyn = dyn + dt * _splat_planes(q["bw"], q["bw_flow"], (h, w))
        dyn_premult, dyn_alpha = dyn[..., :3], dyn[..., 3]  # (H*W, P, 3), (H*W, P)
        static_alpha, static_sample_rgb = q["static_alpha"], q["static_rgb"]
        del q, dyn

        # composite this run of planes behind the previous ones (T starts at their exit value);
        # the splatted dynamic colour is premultiplied, p_d = a_d c_d, so its weight is T alone
        weights = composite_weights(static_alpha, dyn_alpha, start=transmittance)
        rgb += composite_rgb(weights.static, static_sample_rgb, weights.transmittance, dyn_premult)
        depth += (weights.total * z).sum(1)
        dynamicness += weights.dynamic.sum(1)
        dynamic_rgb += (weights.transmittance[..., None] * dyn_premult).sum(1)
        transmittance = transmittance_after(weights.transmittance, static_alpha, dyn_alpha)

        # the static field alone (the background), as the integer render
        s_weights, s_trans = volume_weights(static_alpha, start=static_transmittance)
        static_rgb += (s_weights[..., None] * static_sample_rgb).sum(1)
        static_depth += (s_weights * z).sum(1)
        static_transmittance = transmittance_after(s_trans, static_alpha)

    dynamic_rgb = over_background(dynamic_rgb, dynamicness, cfg.dynamic_background)
    return RenderImage(
        rgb=rgb,
        depth=depth,
        static_rgb=static_rgb,
        static_depth=static_depth,
        dynamic_rgb=dynamic_rgb,
        dynamicness=dynamicness,
    )


def render_view(
    system,
    c2w_nsff: np.ndarray | Tensor,
    K: np.ndarray,
    hw: tuple[int, int],
    time: float,
    chunk: int = RenderSplitConfig.chunk,
    plane_chunk: int | None = None,
) -> RenderImage:
    """Render one camera of a trained system at a (possibly fractional) time.

    Integer times (within :data:`TIME_TOL`) use the ordinary render (``system.render``);
    fractional times t + dt use :func:`interpolate_rays`.

    Args:
        system: a trained :class:`~nsff_core.model.system.NSFFSystem` (uses ``static_field``,
            ``dynamic_field``, ``render``, ``render_cfg``, ``meta.K`` (training intrinsics,
            for NDC) and ``meta.num_frames``), in eval mode.
        c2w_nsff: (4, 4) camera-to-world in the NSFF world with NSFF (OpenGL) camera axes
            (:meth:`nsff_core.model.rays.SceneNormalization.apply_c2w` of a path pose).
        K: (3, 3) intrinsics of the rendering camera at resolution ``hw`` (pixels).
        hw: (H, W).
        time: frame time in [0, N - 1] (frame units).
        chunk: rays per field call (x num_samples points).
        plane_chunk: see :func:`interpolate_rays`.

    Returns:
        :class:`~nsff_core.model.render.RenderImage` of H*W row-major rays, float32 on the CPU.

    Raises:
        ValueError: ``time`` outside [0, N - 1].
    """
    t, dt = split_time(time, system.meta.num_frames)
    K_ndc = system.meta.K
    device = system.device
    h, w = int(hw[0]), int(hw[1])
    c2w = torch.as_tensor(np.asarray(c2w_nsff), dtype=torch.float32, device=device)
    rays_o, rays_d = get_rays(K, c2w, (h, w))
    rays_o, rays_d = rays_to_ndc(rays_o, rays_d, K_ndc)
    with torch.inference_mode():
        if dt == 0.0:
            times = torch.full((h * w,), t, dtype=torch.long, device=device)
            return render_in_chunks(
                lambda o, d, t_: system.render(o, d, t_, training=False).image,
                rays_o,
                rays_d,
                times,
                chunk,
                out_device="cpu",
            )
        img = interpolate_rays(
            system.static_field,
            system.dynamic_field,
            system.render_cfg,
            rays_o,
            rays_d,
            (h, w),
            projection_matrices(K, c2w),
            torch.as_tensor(K_ndc, dtype=torch.float32, device=device),
            t,
            dt,
            chunk=chunk,
            plane_chunk=plane_chunk,
        )
    return RenderImage(**{k: v.cpu() for k, v in vars(img).items()})
