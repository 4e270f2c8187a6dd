"""Typed settings for every stage: the one home of the defaults.

``config.yaml`` repeats these defaults for users to read and edit (a test checks that the two
agree). The workflow validates the config against ``rules/schemas/config.schema.yaml`` when it
starts; the scripts then build one of these dataclasses per stage with :func:`stage_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigError

#: Smallest side, in pixels, of source and training frames that every stage handles. OpenCV's
#: DIS optical flow raises an error or crashes the process (SIGSEGV) when the shorter side of a
#: frame is below 32 px and the other is much longer (measured: 160x28 with the fast and
#: ultrafast presets, 64x15 and 160x15 with medium); from 32 px up every preset works at any
#: aspect ratio up to 8192 px. SfM needs far larger frames to register anything useful: this is
#: the floor below which a stage crashes, not a recommendation.
MIN_FRAME_SIDE = 32
#: Largest number of learned plane features of the planes field (static and dynamic spatial
#: planes over all levels, x channels; checked by the config's validation), and of its
#: per-frame texture (``grid_frame_texture``, checked once the frame count is known): 2^28
#: float32 = 1 GiB, about 4 GiB with gradients and the optimiser's moments; eight times the
#: largest K-Planes model.
MAX_GRID_FEATURES = 1 << 28
#: Largest side, in pixels, of training frames and rendered views (camera-path files): 8K.
#: Larger values are typos that would allocate many GB per frame.
MAX_FRAME_SIDE = 8192


@dataclass(frozen=True)
class SyntheticConfig:
    """Procedural dynamic scene (``source: synthetic:<name>`` in the sheet)."""

    num_frames: int = 24
    width: int = 320
    height: int = 180
    seed: int = 0
    fps: float = 10.0
    #: held-out cameras per time step, as offsets (x, y, z) in metres in the camera frame of
    #: the training camera at that time
    novel_offsets: tuple[tuple[float, float, float], ...] = ((0.0, -0.15, 0.0),)
    #: static geometry: boxes (the demo's fixed room of boxes) or mixed (a room of boxes, tilted
    #: slabs, pillars and spheres laid out from the seed around the movers)
    layout: str = "boxes"
    #: texture frequency of every surface: smooth, medium (the demo's) or high
    texture: str = "medium"
    #: moving objects, 0 to 3 of: cube (the demo's tumbling cube), sphere (bouncing, spinning
    #: ball), box (slides over the floor and turns), walker (articulated figure: torso, head,
    #: swinging arms and legs), stop (a ball that rolls, stops for the middle 30 % of the clip,
    #: rolls on), epipolar (a box sliding back and forth along the camera's translation)
    movers: tuple[str, ...] = ("cube",)
    #: camera path: sweep (the demo's sideways arc looking at the scene centre), sideways
    #: (straight, panning to keep the centre in view), dolly (straight forward, panning a few
    #: degrees), arc (orbit about the centre), handheld (sideways walk with position and
    #: rotation jitter). A straight path without any rotation would leave the focal length
    #: undetermined for SfM (pure translation), so every path turns a little
    camera: str = "sweep"
    #: degradations of the source video only (ground truth stays clean): blur (motion blur over
    #: half the frame interval), noise (signal-dependent sensor noise), jpeg70 (JPEG quality 70)
    degrade: tuple[str, ...] = ()


@dataclass(frozen=True)
class FramesConfig:
    """Frame extraction: range and stride in source frames, then the cap, then resizing."""

    start: int = 0
    #: exclusive end index in source frames; None = to the end of the source
    end: int | None = None
    stride: int = 1
    #: keep at most this many frames (evenly spread over the selected range); None = all
    max_frames: int | None = None
    #: training resolution; give one side (the other follows the aspect ratio, rounded to even)
    #: or both; neither = keep the source size
    width: int | None = 512
    height: int | None = None


@dataclass(frozen=True)
class FlowConfig:
    #: dis (OpenCV DIS, weights-free) or raft (torchvision RAFT-Large, C_T_V1 weights)
    backend: str = "dis"
    #: raft: refinement iterations
    raft_iters: int = 20
    #: dis: OpenCV DIS preset ultrafast, fast or medium, or fine (medium refined down to full
    #: resolution, with a smoother variational refinement)
    dis_preset: str = "fine"
    #: dis: frames DIS runs on: auto (the source frames when the frames rule enlarged them,
    #: else the training frames), training or source (long side capped at 1280x720); the
    #: field is resized to the training size
    dis_scale: str = "auto"
    #: dis: pixels failing the forward-backward test take the colour-weighted mean flow of the
    #: consistent pixels within this many pixels (training size); 0 = keep DIS's flow
    dis_fill_radius: int = 16
    #: dis: a second DIS run per direction, started from the neighbouring pair's flow continued
    #: at constant velocity, fused per pixel by colour residual (large motions, gaps left by
    #: held-out frames); false = one DIS run from zero
    dis_predict: bool = True
    #: forward-backward consistency test |f + b(x+f)|^2 < alpha1 (|f|^2 + |b|^2) + alpha2
    consistency_alpha1: float = 0.01
    consistency_alpha2: float = 0.5


@dataclass(frozen=True)
class MasksConfig:
    #: rigidity (flow against the SfM cameras and depth), epipolar (flow against the camera
    #: motion between two frames), none, maskrcnn (torchvision COCO Mask R-CNN v2) or detectron2
    #: (R50-FPN 3x, when detectron2 is installed)
    backend: str = "rigidity"
    #: maskrcnn/detectron2: COCO classes that move (names, or the groups people, animals,
    #: vehicles)
    classes: tuple[str, ...] = ("people", "animals", "vehicles")
    #: maskrcnn/detectron2: instance score threshold
    score_threshold: float = 0.5
    #: maskrcnn/detectron2: also mark the weights-free motion masks (motion_backend) dynamic
    #: (movers outside the COCO classes)
    union_motion: bool = True
    #: maskrcnn/detectron2: keep an instance only when at least this fraction of its pixels is
    #: dynamic in the weights-free motion masks (a seated person is not masked); 0 keeps all
    min_moving_fraction: float = 0.25
    #: maskrcnn/detectron2: the weights-free backend that says which pixels move
    motion_backend: str = "rigidity"
    #: Sampson distance (pixels) above which a pixel disagrees with the camera motion
    sampson_threshold: float = 1.0
    #: RANSAC reprojection threshold (pixels) of the fundamental-matrix fit
    ransac_threshold: float = 0.5
    #: flow correspondences sampled per frame pair for the fundamental-matrix fit
    num_correspondences: int = 4000
    #: pixels whose 7x7 structure tensor has a smaller eigenvalue than this (grey in [0, 1])
    #: are too flat for their flow to be trusted and never vote dynamic; 0 = no texture test
    min_texture: float = 1e-4
    #: rigidity: flow residual (px) against the best static point that counts as motion
    rigidity_threshold: float = 1.0
    #: rigidity: distance (px) between the best static point and the point at the depth
    #: prior's depth (within rigidity_depth_ratio) that counts as motion
    rigidity_depth_threshold: float = 2.0
    #: rigidity: disparities within this factor of the (aligned) depth prior agree with it
    rigidity_depth_ratio: float = 2.0
    #: rigidity: frames on each side whose flow (chained through the frames between) is tested
    rigidity_neighbours: int = 2
    #: rigidity: a frame's threshold rises to this many times its median score when that is
    #: larger (noisy flow or poses need stronger evidence)
    rigidity_noise_factor: float = 4.0
    #: rigidity: Felzenszwalb segmentation scale for pooling the scores (larger = larger
    #: segments); 0 = no pooling
    segment_scale: float = 100.0
    #: rigidity: hysteresis, pixels above this share of the threshold join a moving region
    hysteresis_low: float = 0.7
    #: rigidity: colour segments next to a mover whose median flow (to the neighbour frames)
    #: differs from the mover's by at most this many px, and from the static scene next to them
    #: by this many px more, join it (a torso between detected legs and head); 0 = off
    join_flow_px: float = 3.0
    #: rigidity: mover components of at least this share of the frame seed the join (smaller
    #: ones may be false positives, which must not grow)
    join_min_area: float = 0.004
    #: rigidity: segments whose median score is below this share of the threshold are static
    #: for the join (a mover's ambiguous parts score between this and hysteresis_low)
    join_static_score: float = 0.15
    #: morphological opening (removes speckle) and closing (fills holes), kernel sizes in px
    open_size: int = 3
    close_size: int = 7
    #: mark background pixels that a moving region encloses completely as dynamic
    fill_holes: bool = True
    #: connected components smaller than this fraction of the image are dropped
    min_area_fraction: float = 0.001
    #: final dilation in pixels (a margin around movers; the rigidity masks follow colour
    #: edges, so a small one suffices)
    dilate: int = 1
    #: weights-free backends: a mask is carried along the flow into the next and previous
    #: frames, up to this many frames from where it was detected, so a mover that stops (its
    #: flow is static then) stays masked while it rests; 0 = off
    persist_frames: int = 8


@dataclass(frozen=True)
class SfmConfig:
    #: COLMAP camera model of the single shared camera (SIMPLE_PINHOLE or PINHOLE; NSFF uses a
    #: pinhole camera, so a distortion model would be fitted and then dropped)
    camera_model: str = "SIMPLE_PINHOLE"
    #: auto = exhaustive up to exhaustive_max_frames frames, else sequential
    matching: str = "auto"
    exhaustive_max_frames: int = 100
    sequential_overlap: int = 15
    max_num_features: int = 8192
    #: fail when fewer than this fraction of frames register; unregistered frames of a run
    #: that passes get poses interpolated in time (cameras.npz ``registered`` says which)
    min_registered_fraction: float = 1.0
    #: percentiles of the depths of the points a frame sees, for its near and far bounds
    near_percentile: float = 1.0
    far_percentile: float = 99.0
    num_threads: int = -1
    #: seed of COLMAP's RANSAC and mapper (-1 = random); fixed for reproducible models
    random_seed: int = 0
    #: SfM runs on the source frames with the long side capped at this many pixels (None =
    #: the training frames); K is scaled to the training size afterwards
    max_size: int | None = 1280
    #: long side (px) of the frames the masks that SfM and the depth prior ignore are computed
    #: on: the source frames scaled down to it (never enlarged), with their own flow, so the
    #: cameras do not change with the training size (rule sfm_masks)
    mask_size: int = 512
    #: horizontal field of view (degrees) to initialise the focal length with, for clips with
    #: little parallax; None = COLMAP's default guess
    focal_prior_fov: float | None = None
    #: models the first (default) mapping run may keep (COLMAP's own default is 50). When a
    #: clip splits, COLMAP keeps starting new models from the frames left over, and on a
    #: panning clip most of those starts fail slowly; the retries of a split run (focal
    #: length held, continuation) start from the database, not from these models. 3 keeps a
    #: clip whose complete model is the second one (a bad initial pair first)
    max_models: int = 3
    #: extract features, map and bundle-adjust on one thread (with random_seed >= 0): the same
    #: frames and masks give the same model (multi-threaded, COLMAP numbers the images in the
    #: order its threads finish and the model changes from run to run); False = num_threads
    deterministic: bool = True


@dataclass(frozen=True)
class DepthConfig:
    #: sparse (densified SfM points, weights-free) or dpt (DPT monocular depth)
    backend: str = "sparse"
    #: dpt: dpt_large (ViT-L/16-384) or dpt_hybrid (ViT-B + ResNet-50)
    dpt_model: str = "dpt_large"
    #: minimum number of SfM points a frame must see for the sparse backend
    min_points: int = 20
    #: sparse backend: use only SfM points seen by at least this many frames
    min_track_length: int = 3
    #: sparse backend: drop a point whose disparity differs by more than this factor from the
    #: median of its 8 nearest points in the image (0 = keep all)
    outlier_ratio: float = 2.0
    #: sparse backend: how the points' disparities become a dense map. edge_aware = weighted
    #: least squares guided by the frame's colour edges; linear = Delaunay interpolation
    densify: str = "edge_aware"
    #: edge_aware: weight of the smoothness term against the point constraints
    smoothness: float = 0.1
    #: edge_aware: colour difference (RGB in [0, 1]) at which neighbours decouple
    edge_sigma: float = 0.03
    #: linear: Gaussian blur (pixels) after interpolation
    smooth_sigma: float = 2.0


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Checks of a scene's priors before training (rule ``diagnose``).

    A check fails when its measured value is outside these bounds; a failed check is a warning
    in the rule's log and in the ``warnings`` column of ``summary.csv`` (an error under
    ``strict``). A bound at the end of its range turns its check off (e.g.
    ``min_mask_coverage: 0`` for a scene without movers).
    """

    #: turn the warnings of the checks into errors that stop the scene before training
    strict: bool = False
    #: horizontal field of view (degrees) of the SfM camera: warn outside [min_fov, max_fov]
    min_fov: float = 30.0
    max_fov: float = 110.0
    #: warn when fewer of the frames than this fraction have an SfM pose of their own
    min_registered_fraction: float = 1.0
    #: dynamic share of a frame: warn when most frames are above max_mask_coverage (static
    #: parts marked) or below min_mask_coverage (movers missed)
    max_mask_coverage: float = 0.4
    min_mask_coverage: float = 0.005
    #: warn when the forward-backward consistent share of the flow is below this
    min_flow_consistent: float = 0.5
    #: warn when the mean over frames of the Spearman rank correlation between the disparity
    #: maps and the disparities of the static SfM points a frame sees is below this
    min_depth_spearman: float = 0.7
    #: warn when holding the SfM focal length 20 % off raises the reprojection error by less
    #: than this fraction (the clip does not fix the focal length; no check with
    #: sfm.focal_prior_fov)
    min_focal_sensitivity: float = 0.01
    #: warn when the movers' own motion between neighbouring frames (median over frames of the
    #: 95th percentile, inside the masks, of the flow minus the background's median flow) is
    #: above this fraction of the frame width: a mover that changes that much between the
    #: frames kept comes out blurred (a smaller frames stride helps); 1 = off
    max_mover_motion: float = 0.05
    #: frames shown in the contact sheet (evenly spaced)
    contact_sheet_frames: int = 6


@dataclass(frozen=True)
class WeightsConfig:
    """Pretrained checkpoints (nsff_core/priors/weights/)."""

    #: cache folder; None = $NSFF_WEIGHTS_DIR, else ~/.cache/nsff/weights. On a cluster: a
    #: shared filesystem path.
    cache_dir: str | None = None
    #: a checkpoint whose full sha256 the registry does not carry: record the digest of the
    #: first file fetched into the cache and refuse a different file afterwards (true), or
    #: refuse to use it at all (false)
    trust_on_first_use: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """NSFF training (defaults = nsff_pl's README configuration, see docs/method.md)."""

    #: field representation: "mlp" (nsff_pl's MLPs) or "planes" (plane-factorised features
    #: and small decoders, much faster; see nsff_core/model/fields_planes.py)
    field: str = "mlp"
    #: MLP width and number of hidden layers of each field (nsff_pl: 256 x 8; field mlp)
    width: int = 256
    depth: int = 8
    #: size of the learned per-frame time code
    time_dim: int = 48
    #: positional-encoding frequencies of position and view direction
    xyz_freqs: int = 10
    dir_freqs: int = 4
    use_viewdir: bool = True
    #: field planes: coarsest plane resolution, number of levels (x2 each; static and
    #: dynamic field), channels per
    #: plane, decoder width, learning rate of the plane features, and weight of their
    #: total-variation regulariser
    grid_base_resolution: int = 32
    grid_levels: int = 4
    grid_dynamic_levels: int = 2
    grid_channels: int = 16
    grid_hidden: int = 64
    grid_lr: float = 0.02
    grid_tv: float = 1e-4
    #: compute the plane regulariser only every this many steps, weighted by that factor (the
    #: same strength on average at 1/k of its cost: a full pass over every plane is about a
    #: third of a cpu_demo step)
    grid_tv_every: int = 1
    #: planes: the NDC box the planes cover: rays (fitted to every training ray's samples,
    #: so turned or moved cameras do not read the border) | ndc (the NDC cube, as before)
    grid_bounds: str = "rays"
    #: planes: the dynamic field: kplanes (space-time planes, the shape rebuilt per frame) |
    #: deform (a canonical field warped per frame, so a mover keeps its shape)
    grid_dynamic: str = "kplanes"
    #: planes, deform: levels of the warp field, at the finest warp resolution / 2^k (k < levels)
    grid_motion_levels: int = 1
    #: planes, deform: resolution of the finest warp level (the others halve it); None =
    #: grid_base_resolution
    grid_motion_resolution: int | None = None
    #: planes, deform: size of a learned code per frame given to the canonical decoder (lets a
    #: mover change shape where the warp cannot follow, e.g. legs); 0 = none
    grid_frame_code: int = 0
    #: planes, deform: levels of space-time planes read at the canonical position (per-frame
    #: detail that moves with the warp), resolutions base * 2^l; 0 = none
    grid_detail_levels: int = 0
    #: planes, deform: cells per axis of a per-frame colour texture over NDC (x, y): a dense
    #: (x, y, frame) grid whose features add to the dynamic colour (and, with
    #: grid_frame_texture_density, thin its density), so each frame can paint a mover's
    #: texture where the warp does not align it; 0 = none
    grid_frame_texture: int = 0
    #: planes, deform: the renders warped to the neighbouring frames train the frame texture
    #: too (true), or read it without gradient (false: each frame's texture learns from its
    #: own frame's pixels alone; movers +0.2 to +2.2 dB on six scenes, docs/method.md)
    grid_frame_texture_warped: bool = False
    #: planes, deform: the frame texture also thins the dynamic density per frame (a term
    #: added to the raw density, at most ln 2 up and without bound down, zero at the start):
    #: the canonical field gives a mover's 3D shape, each frame's texture carves the silhouette
    #: it sees out of it; needs grid_frame_texture > 0
    grid_frame_texture_density: bool = False
    #: planes: cells per axis of one more static feature plane over NDC (x, y) alone, the
    #: image plane of the average camera (fine texture for one plane's cost, where a finer
    #: level of all three planes costs three); 0 = none
    grid_image_resolution: int = 0
    #: bound of the scene flow per frame (NDC units)
    flow_scale: float = 0.2
    #: samples per ray (linear in NDC depth)
    num_samples: int = 128
    #: length (NDC ray parameter) of the static field's last sample interval, the one that
    #: reaches infinity: 100 (nsff_pl) makes that sample an opaque backdrop whatever its
    #: density, which can paint far surfaces at infinity; about one bin (1 / num_samples)
    #: makes the last sample an ordinary one. ``auto`` (:func:`resolve_static_last_delta`):
    #: 1.0 where the camera moves towards the scene, else 100
    static_last_delta: float | str = "auto"
    #: rays per step, all from one frame
    batch_size: int = 512
    lr: float = 5e-4
    #: epochs of ``steps_per_epoch`` steps; the loss schedule counts in epochs
    epochs: int = 50
    #: steps per epoch, overriding epoch_rays; None = epoch_rays / batch_size
    steps_per_epoch: int | None = None
    #: stop after this many steps whatever ``epochs`` says; None = epochs x steps_per_epoch
    max_steps: int | None = None
    #: stop after this many minutes of training whatever the step budget says; None = no limit
    #: (the learning-rate schedule still spans the step budget)
    max_time_minutes: float | None = None
    #: geometric prior weight lambda_geo: init, and x decay every decay_every epochs
    lambda_geo_init: float = 0.04
    lambda_geo_decay_every: float = 10.0
    #: factor on lambda_geo for the depth (disparity) prior alone; the flow prior keeps
    #: lambda_geo / 2 per direction. 1 = nsff_pl. The weights-free depth prior (densified SfM
    #: points) is off by 17-31 % per pixel on the synthetic suite; docs/method.md, Schedule
    lambda_disparity: float = 1.0
    #: whether the depth prior's term covers the rays inside the motion masks: true (nsff_pl,
    #: whose DPT prior sees the movers), false, or auto: false when the scene's depth prior is
    #: weights-free, true for a pretrained one (:func:`resolve_disparity_movers`). The sparse
    #: backend knows no mover's depth (SfM sees static points only; its interpolation, or the
    #: points of a mover the camera follows, which triangulate far behind the scene, fill the
    #: mask), so there the term can only mislead: it pulls a mover to the depth of the wall
    #: behind it, which a half-transparent mover in front of a too-far wall satisfies
    disparity_movers: bool | str = "auto"
    #: width of the box along the ray of the cross-entropy ("thickness") loss
    thickness: int = 1
    #: Gaussian noise std on raw densities during training
    noise_std: float = 1.0
    #: weight of the minimal-scene-flow term (|flow| of every sample, world space; nsff_pl
    #: 0.1). It is the only term that prefers a static explanation: for a mover whose image
    #: motion camera parallax can also explain, it picks "closer and still" over "at its depth
    #: and moving" (docs/method.md, "The depth-motion ambiguity")
    lambda_minimal_flow: float = 0.1
    #: weight of the depth prior's error inside the motion masks, on the dynamic field's own
    #: depth measured in the frame's scale and shift, constant over the run (the depth term
    #: decays with lambda_geo); 0 = nsff_pl. Measured on suite_walker it places the mover at
    #: its depth and costs the fit (docs/method.md, "The depth-motion ambiguity")
    lambda_mover_disparity: float = 0.0
    #: weight of a squared penalty between each ray's dynamic opacity and the motion mask
    #: (0 = nsff_pl, which does not use the masks in training)
    lambda_mask: float = 0.0
    #: weight of the distortion term: the spread of each ray's compositing weights along the
    #: ray (0 = nsff_pl, which has no such term); docs/method.md, Loss terms
    lambda_distortion: float = 0.0
    #: weight of the canonical-consistency term of ``grid_dynamic: deform``: a mover's point
    #: and its scene-flow image at t +- 1 read the same place of the canonical field (not in
    #: nsff_pl; docs/method.md, "A warped canonical dynamic field")
    lambda_canonical: float = 0.0
    #: the warped renders of the photometric and cycle terms on every k-th ray of a batch only
    #: (1 = every ray, nsff_pl); they cost more than the rest of a step on a CPU
    warp_every: int = 1
    #: sample training pixels with probability ~ (1 - SSIM) of the last render of their frame
    #: (nsff_pl --hard_sampling); the weights are refreshed every hard_sampling_every steps
    hard_sampling: bool = False
    hard_sampling_every: int = 1000
    #: share of every batch's pixels drawn in proportion to the running colour error of their
    #: tile (``error_sampling_tile`` px squared; no extra render: the errors of the training
    #: rays themselves), the rest uniform (0 = off; docs/method.md, "Training batches")
    error_sampling: float = 0.0
    error_sampling_tile: int = 8
    #: share of every batch drawn from the frame's motion-mask pixels (grown by 4 px), the rest
    #: as usual; movers cover a few % of a frame, so uniform pixels rarely train them (0 = off)
    dynamic_sampling: float = 0.0
    #: numeric precision: auto (bf16 autocast where the device has fast bf16: CUDA with bf16,
    #: CPUs with AMX; fp32 otherwise), fp32, or bf16
    precision: str = "auto"
    #: training batches drawn on the training device from the scene's frames and priors kept
    #: there, with no host synchronisation per step (fused Adam skips a non-finite step on the
    #: device; the divergence guard and the CSV log read the device every log_every steps):
    #: auto (device with CUDA, else host) | device (the training device: the GPU, or the CPU
    #: without CUDA) | host (drawn on the host, the guard reads every step)
    device_resident: str = "auto"
    #: torch.compile in training: none | fields (each field) | render (the whole render step)
    compile: str = "none"
    #: rays per epoch (the loss schedule counts epochs); None = nsff_pl's H * W * N / 1000
    #: steps of 512 rays, so that the schedule follows the rays seen at any batch_size
    epoch_rays: int | None = None
    #: GPUs that train the scene together, one DDP process each (each draws batch_size rays
    #: per step; an epoch stays the same number of rays, so it takes ceil(1-GPU steps / gpus)
    #: steps). Without CUDA, gpus > 1 runs that many CPU processes (gloo)
    gpus: int = 1
    #: write train/last.ckpt every this many steps (and at the end)
    checkpoint_every: int = 500
    #: log a progress line every this many steps
    log_every: int = 50
    seed: int = 42
    #: a non-finite loss or gradient: stop with an error (stop), or resume once from the last
    #: good checkpoint at half the learning rates (retry)
    on_divergence: str = "stop"


@dataclass(frozen=True)
class RenderSplitConfig:
    """Videos of the render splits (rule ``render``)."""

    #: mp4 or gif
    video_format: str = "mp4"
    fps: float = 10.0
    #: splits rendered for every scene by default (sheet column ``splits`` overrides)
    splits: tuple[str, ...] = ("test", "test_spiral")
    #: rays per forward pass when rendering a trained model (rules render, evaluate and
    #: export): memory against speed, the images are the same
    chunk: int = 4096


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of a trained scene (rules ``train`` and ``evaluate``)."""

    #: k >= 2: frames k-1, 2k-1, ... (never the first or last) are left out of training and
    #: scored at their own pose and time against the real frame (0 = off); see
    #: :mod:`nsff_core.holdout`
    holdout_every: int = 0
    #: let rule weights_evaluate download the LPIPS weights (AlexNet and LPIPS v0.1 linear
    #: layers) into the weights cache; false: it only uses files already there (or in torch
    #: hub's cache) and never opens the network. Without the files LPIPS is reported unavailable
    lpips_fetch: bool = False
    #: synthetic scenes, how a held-out true camera is placed in the SfM frame: "relative" (the
    #: SfM camera of the same time moved by the true camera-frame offset, translation times the
    #: alignment's scale) or "aligned" (the true pose through the one similarity fitted to all
    #: training cameras, which adds SfM's absolute pose error to the score); see
    #: docs/evaluation.md
    novel_poses: str = "relative"


@dataclass(frozen=True)
class WorkflowConfig:
    """Settings of the workflow itself: the top-level keys of ``config.yaml`` besides
    ``scenes`` and the sections (read with :func:`workflow_config`)."""

    #: keep the large intermediates that neither render nor evaluate read (flow_fw, flow_bw,
    #: flow_ok, disp, sfm); false makes them Snakemake temp() outputs, deleted once train has
    #: used them
    keep_intermediates: bool = True


STAGES: dict[str, type] = {
    "frames": FramesConfig,
    "flow": FlowConfig,
    "masks": MasksConfig,
    "sfm": SfmConfig,
    "depth": DepthConfig,
    "train": TrainConfig,
    "render": RenderSplitConfig,
    "weights": WeightsConfig,
    "diagnostics": DiagnosticsConfig,
    "eval": EvalConfig,
    "synthetic": SyntheticConfig,
}

#: settings that moved to another section: (old section, key) -> (new section, key). A user's
#: config may still give the old key (nsff_core.workflow.sheet warns and uses it in its new place), and a
#: stored config (a checkpoint's) may carry it: :func:`from_dict` ignores it there
MOVED_KEYS: dict[tuple[str, str], tuple[str, str]] = {("train", "chunk"): ("render", "chunk")}

T = TypeVar("T")


def resolve_disparity_movers(value: bool | str, weights_free_depth: bool | None) -> bool:
    """:attr:`TrainConfig.disparity_movers` for a scene whose depth prior came from a
    weights-free backend (``weights_free_depth`` True), a pretrained one (False) or an unknown
    one (None, as for a scene prepared outside the workflow).

    ``auto`` is false for a weights-free depth prior (it knows no mover's depth) and true
    otherwise (nsff_pl's behaviour).

    Example: ``resolve_disparity_movers("auto", True)`` is False; ``("auto", False)`` and
    ``("auto", None)`` are True; ``(False, False)`` is False.
    """
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise ConfigError(f"train.disparity_movers must be true, false or auto, got {value!r}")
    return weights_free_depth is not True


#: ``static_last_delta: auto``: the backdrop interval of a scene filmed sideways (nsff_pl's),
#: of one whose camera moves towards it, and the :func:`~nsff_core.model.cameras.forward_zoom`
#: from which a camera counts as moving towards the scene
BACKDROP_DELTA = 100.0
FORWARD_DELTA = 1.0
FORWARD_ZOOM = 0.06


def resolve_static_last_delta(value: float | str, zoom: float | None) -> float:
    """:attr:`TrainConfig.static_last_delta` for a scene whose far content changes its image
    size by the fraction ``zoom`` over the clip (:func:`~nsff_core.model.cameras.forward_zoom`
    of the training cameras at the far SfM points' depth); None where that is not known.

    ``auto`` is :data:`FORWARD_DELTA` (1.0) from a zoom of :data:`FORWARD_ZOOM` (6 %) up and
    :data:`BACKDROP_DELTA` (100, nsff_pl's) below it or where the zoom is not known: a
    backdrop at infinity keeps its size while a real far wall grows as the camera walks towards
    it, and the compromise renders as a zoom blur (docs/method.md, "The backdrop at infinity").

    Example: ``resolve_static_last_delta("auto", 0.13)`` is 1.0; ``("auto", 0.03)`` and
    ``("auto", None)`` are 100.0; ``(0.5, 0.13)`` is 0.5.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value != "auto":
        raise ConfigError(
            f"train.static_last_delta must be a positive number or auto, got {value!r}"
        )
    return FORWARD_DELTA if zoom is not None and zoom >= FORWARD_ZOOM else BACKDROP_DELTA


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a dict; unknown keys raise :class:`ConfigError`, keys that
    moved out of its section (:data:`MOVED_KEYS`) are dropped."""
    values = dict(values or {})
    for section, key in MOVED_KEYS:
        if STAGES.get(section) is cls:
            values.pop(key, None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or cls.__name__}; valid keys: {sorted(names)}"
        )
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = _tuplify(values[f.name])
    return cls(**values)


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict (JSON-able) form of a config dataclass."""
    return dataclasses.asdict(obj)


def stage_config(stage: str, values: dict[str, Any] | None) -> Any:
    """The typed config of ``stage`` (a key of :data:`STAGES`) from its dict."""
    return from_dict(STAGES[stage], values, where=f"config section '{stage}'")


def workflow_config(config: dict[str, Any] | None) -> WorkflowConfig:
    """The :class:`WorkflowConfig` of a whole config (its top-level keys that are fields of
    it; ``scenes`` and the sections are read elsewhere)."""
    names = {f.name for f in dataclasses.fields(WorkflowConfig)}
    values = {k: v for k, v in (config or {}).items() if k in names}
    return from_dict(WorkflowConfig, values, where="config")


__all__ = [
    "DepthConfig",
    "DiagnosticsConfig",
    "EvalConfig",
    "FlowConfig",
    "MOVED_KEYS",
    "FramesConfig",
    "MasksConfig",
    "SfmConfig",
    "STAGES",
    "RenderSplitConfig",
    "SyntheticConfig",
    "TrainConfig",
    "WorkflowConfig",
    "from_dict",
    "stage_config",
    "to_dict",
    "workflow_config",
]
