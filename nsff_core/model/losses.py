"""NSFF training losses: one function per term, plus an explicit schedule of their weights.

Every function takes plain tensors (never a model-output object) and returns a scalar tensor.
Unless stated otherwise a term is computed per ray and averaged over the batch (the table in
docs/method.md, Losses). Shapes use R = rays in the batch, S = samples per ray. Frames and units:

- ``x`` (no suffix): NDC sample positions, the frame the fields live in (:mod:`.rays`);
- ``X_world``: the same points taken to the (normalised) world frame, world units;
- pixel quantities (``pixel_xy``, ``flow_prior``): OpenCV pixel convention, pixel centres at
  integer (x, y) = (column, row), as in :mod:`nsff_core.model.cameras`.

Terms that can be undefined for some rays take an explicit ``valid`` (R,) bool mask. Unlike
nsff_pl, the warped terms are meant to be masked where the neighbour frame
t+1 or t-1 does not exist, and the flow term where the flow prior fails its forward-backward
test. A masked term with no valid ray returns 0 that still backpropagates (zero gradients).

The weights are not mutated by training hooks: :func:`weights_at` maps an epoch (fractional,
or a step and the steps per epoch) to a dict of weights, and :func:`total_loss` sums the terms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .rays import project_points_depth

#: log(w + LOG_EPS) in the entropy terms, as in nsff_pl
LOG_EPS = 1e-8
#: fraction of the samples (nearest first) on which the temporal smoothness applies
TEMPORAL_SAMPLE_FRACTION = 0.95


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """sum(w v) / sum(w) over all entries (weights are used as given); 0 if sum(w) is 0."""
    return (weights * values).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


def _kept(keep: Tensor, x: Tensor) -> Tensor:
    """``x`` (R, ...) with the rows where ``keep`` (R,) is False set to 0.

    The masked terms select their rays this way rather than by indexing: the shapes do not
    depend on the data, so a step needs no host synchronisation on a GPU, and a NaN or inf in a
    masked row reaches neither the value nor the gradient (zero it BEFORE the maths that
    follows, as in ``(_kept(k, a) - _kept(k, b)).square()``)."""
    return torch.where(keep.reshape(keep.shape + (1,) * (x.dim() - keep.dim())), x, 0.0)


# --------------------------------------------------------------------------- reconstruction


def color_loss(rgb: Tensor, target: Tensor) -> Tensor:
    """Photometric reconstruction ``mean_{rays, c} (C_hat - C)^2`` (``col_l``).

    Args:
        rgb: (R, 3) rendered colour in [0, 1].
        target: (R, 3) ground-truth colour of frame t.

    Example: rgb = [[0, 0, 0]], target = [[1, 0, 0.5]] gives (1 + 0 + 0.25) / 3.
    """
    return F.mse_loss(rgb, target)


def _normalise_scale_shift(a: Tensor, eps: float) -> Tensor:
    """(a - median a) / (mean |a - median a| + eps) over the whole (R,) batch."""
    centred = a - a.median()
    return centred / (centred.abs().mean() + eps)


#: :func:`disparity_loss` with ``keep``: fewer kept rays than this give no term (a median and a
#: mean deviation of a handful of rays say nothing of a frame's scale and shift)
MIN_DISPARITY_RAYS = 16


def disparity_loss(
    depth_ndc: Tensor, disp_prior: Tensor, eps: float = 1e-8, keep: Tensor | None = None
) -> Tensor:
    """Scale- and shift-invariant depth term against a monocular disparity prior (``disp_l``).

    With ``norm(a) = (a - median a) / mean|a - median a|`` over the batch,

        loss = mean_r (norm(depth)_r - norm(-disp)_r)^2.

    NDC depth is affine in inverse world depth, and so is the (DPT-like) disparity prior up
    to an unknown scale and shift, hence the comparison with ``-disp`` after normalisation:
    ``depth = a - b * disp`` with b > 0 gives exactly 0. The batch must come from one frame
    (the prior's scale and shift are per frame). ``torch.median`` takes the lower of the two
    middle values for an even R.

    Args:
        depth_ndc: (R,) rendered depth as the NDC ray parameter in [0, 1].
        disp_prior: (R,) prior disparity at the same pixels, any scale and shift.
        eps: added to the normalising mean absolute deviation (a constant batch gives 0).
        keep: optional (R,) bool, the rays the term covers (normalisation and mean over them
            alone; :attr:`TrainConfig.disparity_movers`); fewer than :data:`MIN_DISPARITY_RAYS`
            kept gives 0.

    Example: depth = [0.1, 0.2, 0.6] normalises to [-0.6, 0, 2.4]; disp = [3, 2, 1] gives
    -disp normalised to [-1.5, 0, 1.5]; loss = (0.81 + 0 + 0.81) / 3 = 0.54.
    """
    depth_ndc = depth_ndc.reshape(-1)
    disp_prior = disp_prior.reshape(-1)
    if keep is None:
        target = _normalise_scale_shift(-disp_prior.to(depth_ndc.dtype), eps)
        return (_normalise_scale_shift(depth_ndc, eps) - target.detach()).square().mean()
    # the kept rays alone, with shapes that do not depend on the data (no host sync on a GPU)
    keep = keep.reshape(-1).bool()
    count = keep.sum()
    target = _masked_normalise(-disp_prior.to(depth_ndc.dtype), keep, count, eps)
    pred = _masked_normalise(depth_ndc, keep, count, eps)
    err = _kept(keep, pred - target.detach()).square().sum() / count.clamp_min(1)
    return torch.where(count >= MIN_DISPARITY_RAYS, err, depth_ndc.sum() * 0.0)


def mover_disparity_loss(
    depth_ndc: Tensor,
    disp_prior: Tensor,
    dynamic: Tensor,
    eps: float = 1e-8,
    mover_depth: Tensor | None = None,
) -> Tensor:
    """The depth prior's error on the rays inside the motion masks, in the whole batch's frame.

    Rendered depth and ``-disp`` are normalised for scale and shift over the whole batch, as in
    :func:`disparity_loss` without ``keep`` (the static scene fixes the frame's scale and
    shift), and the squared difference is averaged over the ``dynamic`` rays alone, so that a
    mover covering a few % of a batch is not outweighed by the rest of the frame. The frame's
    median and spread are taken as constants: the gradient reaches the masked rays only. Fewer than
    :data:`MIN_DISPARITY_RAYS` dynamic rays give 0.

    Args:
        depth_ndc: (R,) rendered depth (NDC ray parameter).
        disp_prior: (R,) prior disparity at the same pixels, any scale and shift.
        dynamic: (R,) motion-mask flag of each ray (bool or 0/1).
        mover_depth: optional (R,) depth whose error is measured (e.g. the dynamic field's own
            expected depth, which a half-transparent mover in front of the background cannot
            fake); the frame's scale and shift still come from ``depth_ndc``.

    Example: depth = [0.1, 0.2, 0.6], disp = [3, 2, 1] (errors 0.81, 0, 0.81 as in
    :func:`disparity_loss`), dynamic = only the last ray: 0 (fewer than 16 rays); with 16 such
    rays among the batch the term is the mean of their squared errors.
    """
    depth_ndc = depth_ndc.reshape(-1)
    keep = dynamic.reshape(-1).bool()
    count = keep.sum()
    target = _normalise_scale_shift(-disp_prior.reshape(-1).to(depth_ndc.dtype), eps)
    # the frame's median and spread are constants here: the term moves the masked rays' depth,
    # not the scale of the whole frame (which the static rays of disparity_loss set)
    frame = depth_ndc.detach()
    median = frame.median()
    spread = (frame - median).abs().mean()
    measured = depth_ndc if mover_depth is None else mover_depth.reshape(-1)
    pred = (measured - median) / (spread + eps)
    err = _kept(keep, pred - target.detach()).square()
    mean = err.sum() / count.clamp_min(1)
    return torch.where(count >= MIN_DISPARITY_RAYS, mean, depth_ndc.sum() * 0.0)


def _masked_normalise(a: Tensor, keep: Tensor, count: Tensor, eps: float) -> Tensor:
    """:func:`_normalise_scale_shift` over the entries of ``a`` where ``keep`` (``count`` of
    them); the others are left at any finite value. The median is the lower middle value of
    the kept entries, as ``torch.median``, found by sorting them to the front."""
    big = torch.finfo(a.dtype).max
    ordered = torch.sort(torch.where(keep, a, big)).values
    median = ordered.gather(0, ((count - 1).clamp_min(0) // 2).reshape(1))
    centred = _kept(keep, a - median)
    mad = centred.abs().sum() / count.clamp_min(1)
    return centred / (mad + eps)


def optical_flow_loss(
    X_world: Tensor, P_neighbour: Tensor, pixel_xy: Tensor, flow_prior: Tensor, valid: Tensor
) -> Tensor:
    """L1 distance in pixels between projected scene-flow correspondences and the 2D flow prior
    (``flow_fw_l`` with X_fw, P_{t+1}; ``flow_bw_l`` with X_bw, P_{t-1}).

        uv_r = (P X_r)_xy / (|(P X_r)_z| + 1e-8)
        loss = mean_{valid r} mean_{u,v} |uv_r - (p_r + flow_r)|

    Args:
        X_world: (R, 3) rendered corresponding points at t +- 1 (``X + F``), world frame.
        P_neighbour: (R, 3, 4) or (3, 4) world -> pixel projection of the neighbour frame.
        pixel_xy: (R, 2) the rays' pixel centres in frame t.
        flow_prior: (R, 2) optical flow prior t -> t +- 1 at those pixels, pixels.
        valid: (R,) bool, the neighbour frame exists and the flow passed its consistency test.
            Rays whose projected depth ``(P X)_z`` is not > 0 are dropped here as well.

    Returns a scalar in pixels; 0 (with zero gradients) when no ray is valid.

    Example: P = [I | 0], X = (2, 3, 1), p = (1, 1), flow = (0.5, 1) gives uv = (2, 3),
    target (1.5, 2) and a loss of (0.5 + 1) / 2 = 0.75.
    """
    with torch.no_grad():
        in_front = project_points_depth(P_neighbour.to(X_world.dtype), X_world)[1] > 0  # NaN: False
    keep = valid.reshape(-1).bool() & in_front
    # masked rays are set to the origin before the maths (any finite point), so garbage in
    # them cannot reach the value or the gradient, and no shape depends on the data
    uv, _ = project_points_depth(P_neighbour.to(X_world.dtype), _kept(keep, X_world))
    target = _kept(keep, pixel_xy.to(uv.dtype) + flow_prior.to(uv.dtype))
    per_ray = _kept(keep, (uv - target).abs().mean(dim=-1))
    return per_ray.sum() / keep.sum().clamp_min(1)


def photometric_warp_loss(
    rgb_warped: Tensor, target: Tensor, disocclusion: Tensor, valid: Tensor
) -> Tensor:
    """Disocclusion-weighted MSE of the render warped from t +- 1 against frame t (``pho_l``,
    one direction; the fw and bw terms are added with equal weight).

        loss = sum_{valid r} D_r e_r / sum_{valid r} D_r,   e_r = mean_c (C_warped - C)^2

    which is nsff_pl's ``mean_batch(D e) / mean_batch(D)`` restricted to the valid rays.

    Args:
        rgb_warped: (R, 3) colour rendered at t from the fields warped to t +- 1.
        target: (R, 3) ground-truth colour of frame t.
        disocclusion: (R,) per-ray indicator D = 1 - |sum_i (w'_d,i - w_d,i)| in [0, 1];
            treated as a constant (detached).
        valid: (R,) bool, the neighbour frame t +- 1 exists.

    Example: D = [1, 0.5], e = [0.3, 0.6] gives (0.3 + 0.3) / 1.5 = 0.4.
    """
    keep = valid.reshape(-1).bool()
    per_ray = (_kept(keep, rgb_warped) - _kept(keep, target)).square().mean(dim=-1)
    return _weighted_mean(per_ray, _kept(keep, disocclusion.reshape(-1).detach().to(per_ray.dtype)))


def cycle_loss(x: Tensor, x_cycled: Tensor, disocclusion_samples: Tensor, valid: Tensor) -> Tensor:
    """Disocclusion-weighted forward-backward cycle consistency in NDC (``cyc_l``, one
    direction: ``x_cycled = x^{fw->bw}`` or ``x^{bw->fw}``).

        loss = sum_{valid r, i} D_r,i mean_xyz |x_cycled_r,i - x_r,i| / sum_{valid r, i} D_r,i

    i.e. nsff_pl's mean over samples and xyz of ``D_i |.| / mean(D)``, with both means over
    all samples of the valid rays.

    Args:
        x: (R, S, 3) NDC sample positions at time t.
        x_cycled: (R, S, 3) the samples moved to t +- 1 and back by the returned flow, NDC.
        disocclusion_samples: (R, S) per-sample indicator D_i = 1 - |w'_d,i - w_d,i|
            (detached).
        valid: (R,) bool, the neighbour frame t +- 1 exists.

    Example: one ray, D = [1, 0], |dx| = [[0.3, 0, 0], [9, 9, 9]] gives 0.1.
    """
    keep = valid.reshape(-1).bool()
    per_sample = (_kept(keep, x_cycled) - _kept(keep, x)).abs().mean(dim=-1)
    return _weighted_mean(
        per_sample, _kept(keep, disocclusion_samples.detach().to(per_sample.dtype))
    )


def canonical_loss(
    canonical: Tensor, canonical_warped: Tensor, dynamic_weights: Tensor, valid: Tensor
) -> Tensor:
    """How far a mover's points at t and their scene-flow images at t +- 1 land apart in the
    canonical field of ``grid_dynamic: deform``.

        loss = sum_{valid r, i} w_d,r,i |c'_r,i - c_r,i|_1 / sum_{valid r, i} w_d,r,i

    A warp that maps the same material point to the same canonical point in every frame lets
    the canonical field learn a mover once from all frames; without this term nothing asks for
    it, and the warp can file each frame's mover under its own canonical coordinates (which
    then only sees that frame's rays). The dynamic weights w_d (detached) restrict it to the
    mover's visible surface. The field reports c' without the gradient of its query position
    x + f, so the term moves the warp onto the scene flow and leaves the flow to the
    photometric terms and the priors (else an identity warp turns it into a pull of f to 0).

    Args:
        canonical: (R, S, 3) canonical coordinates of the samples at t.
        canonical_warped: (R, S, 3) those of the samples moved by their scene flow, at t +- 1.
        dynamic_weights: (R, S) composite dynamic weights at t.
        valid: (R,) bool, the neighbour frame exists.

    Example: one ray, w_d = [1, 0], |dc| = [[0.3, 0, 0], [9, 9, 9]] gives 0.3.
    """
    keep = valid.reshape(-1).bool()
    per_sample = (_kept(keep, canonical_warped) - _kept(keep, canonical)).abs().sum(dim=-1)
    weights = _kept(keep, dynamic_weights.detach().to(per_sample.dtype))
    return _weighted_mean(per_sample, weights)


# --------------------------------------------------------------------------- scene-flow priors


def temporal_smoothness(
    X_world: Tensor, X_fw_world: Tensor, X_bw_world: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Constant-velocity prior in world space (``reg_temp_sm_l``):

        loss = mean_{r, i < floor(0.95 S), xyz} |X^fw_i + X^bw_i - 2 X_i|

    Only the nearest 95 % of the samples count: far NDC samples map to huge world coordinates.

    Args:
        X_world: (R, S, 3) sample positions at t, world frame.
        X_fw_world, X_bw_world: (R, S, 3) the samples moved by the forward/backward scene flow
            (NDC ``x + f`` taken to world).
        valid: optional (R,) bool, e.g. both neighbours exist; None = all rays.

    Example: X = 0, X^fw = (1, 0, 0), X^bw = (0, 0, 0) on every sample gives 1/3.
    """
    n = math.floor(TEMPORAL_SAMPLE_FRACTION * X_world.shape[1])
    accel = (X_fw_world[:, :n] + X_bw_world[:, :n] - 2 * X_world[:, :n]).abs()
    if valid is None:
        return accel.sum() / max(accel.numel(), 1)
    keep = valid.reshape(-1).bool()
    # sum / count rather than mean: 0 (not NaN) when no ray is valid
    count = keep.sum() * (accel.shape[1] * accel.shape[2])
    return _kept(keep, accel).sum() / count.clamp_min(1)


def minimal_flow(X_world: Tensor, X_fw_world: Tensor, X_bw_world: Tensor) -> Tensor:
    """Small scene flow in world space (``reg_min_l``), on all samples:

        loss = mean_{r, i, xyz} (|X^fw_i - X_i| + |X^bw_i - X_i|)

    Args:
        X_world, X_fw_world, X_bw_world: (R, S, 3) world positions at t and moved by the
            forward/backward scene flow.

    Example: X = 0, X^fw = (3, 0, 0), X^bw = (0, -3, 0) gives 1 + 1 = 2.
    """
    return ((X_fw_world - X_world).abs() + (X_bw_world - X_world).abs()).mean()


def spatial_smoothness(X_world: Tensor, X_fw_world: Tensor, X_bw_world: Tensor) -> Tensor:
    """Scene flow smooth along each ray, world space (``reg_sp_sm_l``):

        S = X^fw - X (and X^bw - X),  w_i = exp(-2 ||X_{i+1} - X_i||_2)  (detached)
        loss = mean_{r, i < S-1} w_i mean_xyz (|S^fw_{i+1} - S^fw_i| + |S^bw_{i+1} - S^bw_i|)

    Args:
        X_world, X_fw_world, X_bw_world: (R, S, 3) world positions at t and moved by the
            forward/backward scene flow.

    Example: two samples 0.5 apart, S^fw = [(0,0,0), (3,0,0)], S^bw = 0 gives exp(-1) * 1.
    """
    flow_fw = X_fw_world - X_world
    flow_bw = X_bw_world - X_world
    step = (X_world[:, 1:] - X_world[:, :-1]).detach()
    weights = torch.exp(-2 * torch.linalg.vector_norm(step, dim=-1))
    jump = (flow_fw[:, 1:] - flow_fw[:, :-1]).abs() + (flow_bw[:, 1:] - flow_bw[:, :-1]).abs()
    return (weights * jump.mean(dim=-1)).mean()


# --------------------------------------------------------------------------- static / dynamic


def entropy_loss(w_dynamic: Tensor) -> Tensor:
    """Entropy of the dynamic weights along each ray (``entropy_l``), averaged over rays:

        loss = mean_r sum_i -w_d,i log(w_d,i + 1e-8)

    Low entropy concentrates the dynamic content into a thin shell.

    Args:
        w_dynamic: (R, S) dynamic compositing weights w_d,i = alpha_d,i T_i.

    Example: a one-hot ray gives ~0; a uniform ray of 4 samples (0.25 each) gives log 4.
    """
    return (-w_dynamic * torch.log(w_dynamic + LOG_EPS)).sum(dim=-1).mean()


def cross_entropy_thickness_loss(w_dynamic: Tensor, w_static: Tensor, thickness: int) -> Tensor:
    """Keeps the static weights off the neighbourhood of dynamic peaks (``cross_entropy_l``):

        loss = mean_r sum_i (k * w_d)_i log(w_s,i + 1e-8)

    where ``k * w_d`` is the stop-gradient dynamic weight convolved along the samples with an
    un-normalised box of ``thickness`` ones, zero-padded at both ends (sample i sums
    w_d over i - (thickness-1)//2 .. i + thickness//2). The value is <= 0; minimising it drives
    w_s towards 0 wherever the smeared w_d is large.

    Args:
        w_dynamic: (R, S) dynamic weights (detached here).
        w_static: (R, S) static weights w_s,i = alpha_s,i T_i.
        thickness: box width in samples, >= 1 (nsff_pl default 1, README suggests 15).

    Example: w_d = [0, 1, 0], w_s = [0.5, 0.25, 1]: thickness 1 gives log(0.25); thickness 3
    gives log(0.5) + log(0.25) + log(1) (each +1e-8 inside the logs).
    """
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    w_d = w_dynamic.detach().to(w_static.dtype).unsqueeze(1)  # (R, 1, S)
    if thickness > 1:
        w_d = F.pad(w_d, ((thickness - 1) // 2, thickness // 2))
        box = w_d.new_ones(1, 1, thickness)
        w_d = F.conv1d(w_d, box)
    return (w_d.squeeze(1) * torch.log(w_static + LOG_EPS)).sum(dim=-1).mean()


def distortion_loss(weights: Tensor, z: Tensor) -> Tensor:
    """How spread out along each ray the compositing weights are (the distortion regulariser of
    mip-NeRF 360), averaged over rays:

        loss = mean_r [ sum_i sum_j w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 d_i ]

    Sample i stands for the bin [e_i, e_i+1] of the ray parameter, whose edges lie halfway between
    neighbouring samples (the first and last sample are the outer edges, as in the jittered
    sampling of :func:`nsff_core.model.render.sample_along_ray`); m_i is the bin's centre and d_i
    its width. The first sum pulls the weight of a ray together, the second shrinks each bin's
    share: the loss is smallest for one thin surface. Not an nsff_pl term. A surface whose
    density is smeared over depth renders sharp at the training cameras and streaks sideways at
    cameras beside them; this term removes that smear. The double sum is computed in O(S) with
    prefix sums: sum_{i,j} = 2 sum_i w_i (m_i W_<i - (wm)_<i).

    Args:
        weights: (R, S) total compositing weights w_i.
        z: (R, S) sorted ray parameters of the samples (NDC, in [0, 1]).

    Example: all weight in one bin of width 0.1 gives 0.1 / 3; half the weight at each of two
    bin centres 1 apart (bins of width 0) gives 2 * 0.25 * 1 = 0.5.
    """
    w = weights.float()
    z = z.float()
    mids = 0.5 * (z[..., 1:] + z[..., :-1])
    edges = torch.cat([z[..., :1], mids, z[..., -1:]], dim=-1)
    centre = 0.5 * (edges[..., 1:] + edges[..., :-1])
    width = edges[..., 1:] - edges[..., :-1]
    w_before = torch.cumsum(w, dim=-1) - w
    wm_before = torch.cumsum(w * centre, dim=-1) - w * centre
    spread = 2.0 * (w * (centre * w_before - wm_before)).sum(dim=-1)
    own = (w.square() * width).sum(dim=-1) / 3.0
    return (spread + own).mean()


# --------------------------------------------------------------------------- weights


#: names of the terms, the keys of :func:`weights_at` and of ``terms`` in :func:`total_loss`
def mask_dynamicness_loss(dynamicness: Tensor, dynamic_mask: Tensor) -> Tensor:
    """Mean squared difference between the rays' dynamic opacity ``sum_i w_d,i`` and the motion
    mask (1 inside, 0 outside) (R,) -> ().

    Not an nsff_pl term (its masks only gate preprocessing). Outside the masks it stops the
    dynamic field from explaining static background, which it can memorise frame by frame and
    which then does not move with the camera in novel views; inside, it hands the moving content
    to the dynamic field, so that the static field does not settle on a time-averaged ghost of
    it. Use a small weight: masks are dilated and imperfect.

    Example: dynamicness [0.5, 1.0], mask [False, True] -> (0.25 + 0) / 2 = 0.125.
    """
    return (dynamicness - dynamic_mask.to(dynamicness.dtype)).square().mean()


TERMS = (
    "color",
    "disparity",
    "flow_fw",
    "flow_bw",
    "photometric_fw",
    "photometric_bw",
    "cycle_fw",
    "cycle_bw",
    "temporal_smoothness",
    "minimal_flow",
    "spatial_smoothness",
    "entropy",
    "cross_entropy",
    "mask",
    "distortion",
    "field_regularization",
    "canonical",
    "mover_disparity",
)


@dataclass(frozen=True)
class LossWeights:
    """Base weights and schedule constants (nsff_pl defaults; docs/method.md, Schedule).

    The geometric prior weight decays stepwise, ``lambda_geo(e) = lambda_geo_init *
    lambda_geo_decay ** floor(e / lambda_geo_decay_every)``; the disparity term gets
    ``lambda_geo * disparity`` and each flow direction ``lambda_geo / 2``. The cross-entropy weight ramps
    in linearly: ``cross_entropy * min(e / cross_entropy_ramp_epochs, 1)``. The photometric and
    cycle weights apply to each direction (fw and bw add up, as in nsff_pl).
    """

    color: float = 1.0
    photometric: float = 1.0
    cycle: float = 1.0
    temporal_smoothness: float = 0.1
    minimal_flow: float = 0.1
    spatial_smoothness: float = 0.1
    entropy: float = 1e-3
    cross_entropy: float = 1e-3 / 5
    cross_entropy_ramp_epochs: float = 10.0
    #: dynamic opacity against the motion masks (not in nsff_pl: 0)
    mask: float = 0.0
    #: spread of the total weights along each ray (not in nsff_pl: 0)
    distortion: float = 0.0
    #: the field's own regulariser (total variation of plane features; 0 for MLP fields)
    field_regularization: float = 0.0
    #: the same material point at t and t +- 1 in the same canonical place (deform fields; 0)
    canonical: float = 0.0
    lambda_geo_init: float = 0.04
    lambda_geo_decay: float = 0.1
    lambda_geo_decay_every: float = 10.0
    #: factor on ``lambda_geo`` for the disparity term only (1 = nsff_pl)
    disparity: float = 1.0
    #: the depth prior inside the motion masks, constant (no decay; not in nsff_pl: 0)
    mover_disparity: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LossWeights.{f.name} must be finite and >= 0, got {value}")
        for name in ("cross_entropy_ramp_epochs", "lambda_geo_decay_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LossWeights.{name} must be > 0")

    def lambda_geo(self, epoch: float) -> float:
        """Weight of the geometric priors at (possibly fractional) ``epoch``."""
        n_decays = math.floor(epoch / self.lambda_geo_decay_every)
        return self.lambda_geo_init * self.lambda_geo_decay**n_decays


def weights_at(
    epoch: float | None = None,
    *,
    step: int | None = None,
    steps_per_epoch: int | None = None,
    base: LossWeights | None = None,
) -> dict[str, float]:
    """The weight of every term (keys :data:`TERMS`) at an epoch; a pure function.

    Give either ``epoch`` (fractional allowed, e.g. 2.5) or ``step`` and ``steps_per_epoch``
    (epoch = step / steps_per_epoch). At integer epochs this equals nsff_pl's values set in
    ``on_train_epoch_start``; between them, the cross-entropy ramp is continuous.

    Example (defaults): epoch 0 -> disparity 0.04, flow_fw 0.02, cross_entropy 0;
    epoch 10 -> disparity 0.004, cross_entropy 2e-4.
    """
    if (epoch is None) == (step is None):
        raise ValueError("give either epoch or step (with steps_per_epoch)")
    if step is not None:
        if not steps_per_epoch or steps_per_epoch <= 0:
            raise ValueError("step needs a positive steps_per_epoch")
        epoch = step / steps_per_epoch
    assert epoch is not None
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    w = base if base is not None else LossWeights()
    geo = w.lambda_geo(epoch)
    return {
        "color": w.color,
        "disparity": geo * w.disparity,
        "flow_fw": geo / 2,
        "flow_bw": geo / 2,
        "photometric_fw": w.photometric,
        "photometric_bw": w.photometric,
        "cycle_fw": w.cycle,
        "cycle_bw": w.cycle,
        "temporal_smoothness": w.temporal_smoothness,
        "minimal_flow": w.minimal_flow,
        "spatial_smoothness": w.spatial_smoothness,
        "entropy": w.entropy,
        "cross_entropy": w.cross_entropy * min(epoch / w.cross_entropy_ramp_epochs, 1.0),
        "mask": w.mask,
        "distortion": w.distortion,
        "field_regularization": w.field_regularization,
        "canonical": w.canonical,
        "mover_disparity": w.mover_disparity,
    }


def total_loss(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum_k weights[k] * terms[k]`` over the terms given (a missing term is simply absent).

    Every term needs a weight (a typo in a name raises ``KeyError``). Zero-weighted terms are
    still added, so a NaN in any computed term shows up in the total.
    """
    if not terms:
        raise ValueError("no loss terms given")
    unknown = sorted(set(terms) - set(weights))
    if unknown:
        raise KeyError(f"loss terms without a weight: {unknown}")
    return torch.stack([weights[k] * t.reshape(()) for k, t in terms.items()]).sum()
