"""The NSFF LightningModule: wiring of fields, renderer and losses (no file IO).

One training step renders a :class:`~nsff_core.model.data.RayBatch` of one frame t with the warped
renders to t +- 1, computes every loss term (docs/method.md, Losses) as its own function
(:mod:`nsff_core.model.losses`) and sums them with the epoch's weights (:func:`losses.weights_at`).
Terms that need a neighbour frame are masked at the first and last frame (nsff_pl was not).

Under DDP (``train.gpus`` > 1) every rank trains on its own rays: the logged terms are averaged
over the ranks, a checkpoint keeps every rank's pixel-sampler state (and a digest of every
rank's weights, which DDP keeps equal), and the hard-sampling weights are computed from the
predictions of all ranks on rank 0 and broadcast.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch

from nsff_core.config import TrainConfig, from_dict, resolve_disparity_movers, to_dict
from nsff_core.errors import ConfigError

from . import losses as L
from . import train_views as views
from .data import RayBatch, SceneMeta, TileErrors
from .fields import DynamicField, StaticField
from .fields_planes import PlaneDeformDynamicField, PlaneDynamicField, PlaneStaticField
from .rays import ndc_extent, ndc_to_world, projection_matrices
from .render import RenderOutput, render_rays

Tensor = torch.Tensor
log = logging.getLogger(__name__)


def dist_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_fields(
    cfg: TrainConfig, num_frames: int, extent: tuple[float, float] = (1.0, 1.0)
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The static and dynamic field of ``cfg.field`` ("mlp" or "planes"); ``extent``: the NDC
    half-widths the planes cover (planes only)."""
    if cfg.lambda_canonical > 0 and (cfg.field, cfg.grid_dynamic) != ("planes", "deform"):
        raise ConfigError(
            "train.lambda_canonical needs a canonical field to be consistent in: field planes "
            f"with grid_dynamic deform (got field {cfg.field}, grid_dynamic {cfg.grid_dynamic});"
            " set lambda_canonical: 0"
        )
    deform_only = {
        "grid_frame_code": cfg.grid_frame_code,
        "grid_detail_levels": cfg.grid_detail_levels,
        "grid_frame_texture": cfg.grid_frame_texture,
    }
    used = [k for k, v in deform_only.items() if v]
    if used and (cfg.field, cfg.grid_dynamic) != ("planes", "deform"):
        raise ConfigError(
            f"train.{used[0]} extends the canonical field of field planes with grid_dynamic "
            f"deform (got field {cfg.field}, grid_dynamic {cfg.grid_dynamic}); set it to 0"
        )
    if cfg.field == "mlp":
        fcfg = views.mlp_field_config(cfg)
        return StaticField(fcfg), DynamicField(fcfg, num_frames)
    if cfg.field == "planes":
        pcfg = views.plane_field_config(cfg, extent)
        dynamic = {"kplanes": PlaneDynamicField, "deform": PlaneDeformDynamicField}
        if cfg.grid_dynamic not in dynamic:
            raise ConfigError(
                f"train.grid_dynamic must be kplanes or deform, got {cfg.grid_dynamic!r}"
            )
        return PlaneStaticField(pcfg), dynamic[cfg.grid_dynamic](pcfg, num_frames)
    raise ConfigError(f"train.field must be mlp or planes, got {cfg.field!r}")


def stored_train_config(values: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a checkpoint's stored settings (``hyper_parameters["cfg"]``):
    a checkpoint from before ``train.grid_bounds`` trained its planes on the NDC cube, and
    keys that moved to other sections (``chunk``) are dropped."""
    if "grid_bounds" not in values:
        values = {**values, "grid_bounds": "ndc"}
    return from_dict(TrainConfig, values)


def canonical_term(out: RenderOutput) -> Tensor:
    """The canonical-consistency term (:func:`~nsff_core.model.losses.canonical_loss`), the
    mean of its two directions, on the rays of the warped renders."""
    warps = (out.fw, out.bw)
    if out.canonical is None or any(w is None or w.canonical is None for w in warps):
        raise ValueError("canonical_term needs a training render of a canonical (deform) field")
    both = [
        L.canonical_loss(
            w.on_rays(out.canonical),
            w.canonical,
            w.on_rays(out.dynamic_weights),
            w.on_rays(w.valid),
        )
        for w in warps
    ]
    return (both[0] + both[1]) / 2


#: the mover-depth term covers masked rays whose dynamic opacity is above this (below it the
#: dynamic field's own depth is the mean of almost nothing)
MOVER_DEPTH_MIN_OPACITY = 0.1

#: steps between refreshes of the error-sampling pixel weights (train.error_sampling)
ERROR_SAMPLING_EVERY = 10


def loss_terms(
    out: RenderOutput,
    batch: RayBatch,
    P: Tensor,
    K: Tensor,
    thickness: int,
    disparity_movers: bool = True,
) -> dict[str, Tensor]:
    """Every loss term of one training batch (names as :data:`losses.TERMS`).

    Args:
        out: training render (with ``out.fw`` and ``out.bw``).
        batch: the rays and their targets.
        P: (N, 3, 4) NSFF world -> pixel projection of every frame.
        K: (3, 3) training intrinsics (for NDC -> world).
        thickness: :attr:`TrainConfig.thickness` of the cross-entropy term.
        disparity_movers: False leaves the rays inside the motion masks out of the depth-prior
            term (:attr:`TrainConfig.disparity_movers`).
    """
    assert out.fw is not None and out.bw is not None, "loss_terms needs a training render"
    fw, bw = out.fw, out.bw  # the photometric and cycle terms cover their rays (fw.rays)
    X = ndc_to_world(out.points, K)
    X_fw = ndc_to_world(out.fw.points, K)
    X_bw = ndc_to_world(out.bw.points, K)
    fw_valid = out.fw.valid & batch.flow_fw_valid
    bw_valid = out.bw.valid & batch.flow_bw_valid
    both = out.fw.valid & out.bw.valid
    return {
        "color": L.color_loss(out.image.rgb, batch.rgb),
        "disparity": L.disparity_loss(
            out.image.depth, batch.disp, keep=None if disparity_movers else ~batch.dynamic.bool()
        ),
        "flow_fw": L.optical_flow_loss(
            ndc_to_world(out.surface_point_fw, K),
            P[out.fw.time],
            batch.xy,
            batch.flow_fw,
            fw_valid,
        ),
        "flow_bw": L.optical_flow_loss(
            ndc_to_world(out.surface_point_bw, K),
            P[out.bw.time],
            batch.xy,
            batch.flow_bw,
            bw_valid,
        ),
        "photometric_fw": L.photometric_warp_loss(
            out.fw.rgb, fw.on_rays(batch.rgb), out.fw.disocclusion, fw.on_rays(fw.valid)
        ),
        "photometric_bw": L.photometric_warp_loss(
            out.bw.rgb, bw.on_rays(batch.rgb), out.bw.disocclusion, bw.on_rays(bw.valid)
        ),
        "cycle_fw": L.cycle_loss(
            fw.on_rays(out.points), fw.cycle_points, fw.disocclusion_samples, fw.on_rays(fw.valid)
        ),
        "cycle_bw": L.cycle_loss(
            bw.on_rays(out.points), bw.cycle_points, bw.disocclusion_samples, bw.on_rays(bw.valid)
        ),
        "temporal_smoothness": L.temporal_smoothness(X, X_fw, X_bw, both),
        "minimal_flow": L.minimal_flow(X, X_fw, X_bw),
        "spatial_smoothness": L.spatial_smoothness(X, X_fw, X_bw),
        "entropy": L.entropy_loss(out.dynamic_weights),
        "cross_entropy": L.cross_entropy_thickness_loss(
            out.dynamic_weights, out.static_weights, thickness
        ),
        "mask": L.mask_dynamicness_loss(out.image.dynamicness, batch.dynamic),
        "distortion": L.distortion_loss(out.weights, out.z),
    }


def mover_disparity_term(out: RenderOutput, batch: RayBatch) -> Tensor:
    """The mover-depth term (:func:`losses.mover_disparity_loss`) on the dynamic field's own
    expected depth, over the masked rays with some dynamic opacity."""
    return L.mover_disparity_loss(
        out.image.depth,
        batch.disp,
        batch.dynamic.bool() & (out.image.dynamicness.detach() > MOVER_DEPTH_MIN_OPACITY),
        mover_depth=(out.dynamic_weights * out.z).sum(-1)
        / out.image.dynamicness.clamp_min(MOVER_DEPTH_MIN_OPACITY),
    )


def psnr(mse: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (dB) of a mean squared error of images in [0, 1]."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def render_rng_state(device: torch.device) -> dict[str, Tensor]:
    """The random state that training's renders draw from (stratified jitter and density
    noise use the global generators): the CPU one, and the CUDA one of ``device``'s GPU."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_render_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore :func:`render_rng_state` (a CUDA state only on a CUDA device)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class NSFFSystem(pl.LightningModule):
    """Static + dynamic fields of one scene and their training step.

    Args:
        cfg: training settings; a dict of :class:`TrainConfig` fields is a checkpoint's
            (:func:`stored_train_config`), as Lightning passes the stored hyper-parameters.
        meta: the scene's facts the model needs (:class:`~nsff_core.model.data.SceneMeta`),
            or their :meth:`~nsff_core.model.data.SceneMeta.to_dict` (a checkpoint's).
        steps_per_epoch: for the loss schedule.

    The hyper-parameters (``hparams``, kept in checkpoints) are plain data, ``{"cfg":
    to_dict(cfg), "meta": meta.to_dict(), "steps_per_epoch": int}``, so that checkpoints
    reload without our types (:func:`nsff_core.model.checkpoint.load_system` also reads the
    flat form of older checkpoints).
    """

    def __init__(
        self,
        cfg: TrainConfig | dict[str, Any],
        meta: SceneMeta | dict[str, Any],
        steps_per_epoch: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg if isinstance(cfg, TrainConfig) else stored_train_config(cfg)
        self.meta = meta if isinstance(meta, SceneMeta) else SceneMeta.from_dict(meta)
        self.save_hyperparameters(
            {
                "cfg": to_dict(self.cfg),
                "meta": self.meta.to_dict(),
                "steps_per_epoch": int(steps_per_epoch),
            }
        )
        num_frames, hw = self.meta.num_frames, self.meta.hw
        #: NDC half-widths (x, y) the plane fields cover (train.grid_bounds)
        self.extent = (1.0, 1.0)
        if self.cfg.field == "planes" and self.cfg.grid_bounds == "rays" and hw is not None:
            self.extent = ndc_extent(self.meta.K, self.meta.c2w, hw)
        self.static_field, self.dynamic_field = make_fields(self.cfg, num_frames, self.extent)
        self.render_cfg = views.render_config(self.cfg)
        self.loss_weights = views.loss_weights(self.cfg)
        #: the depth prior's term inside the motion masks; ``auto`` is decided by the scene's
        #: depth backend where the scene is trained (rule train), and counts as true (nsff_pl)
        #: where that is not known
        self.disparity_movers = resolve_disparity_movers(self.cfg.disparity_movers, None)
        #: how the training pixels are drawn; the system keeps the hard-sampling weights
        self.sampling = views.sampler_config(self.cfg)
        self.steps_per_epoch = int(steps_per_epoch)
        if self.sampling.hard_sampling:
            if hw is None:
                raise ConfigError("train.hard_sampling needs the image size (hw)")
            n_pix = hw[0] * hw[1]
            # sampling weight of every pixel (hard sampling), kept in checkpoints so that a resumed
            # run samples as the interrupted one did; the last prediction of every pixel
            # (not kept: it is refilled within an epoch)
            self.register_buffer("hard_weights", torch.ones(num_frames, n_pix))
            self.register_buffer("last_rgb", torch.zeros(num_frames, n_pix, 3), persistent=False)
            # the step of each last prediction (-1: none yet), to merge the ranks' predictions
            self.register_buffer(
                "last_step", torch.full((num_frames, n_pix), -1, dtype=torch.int32), False
            )
        #: error sampling: the running colour error of every tile of every frame (kept in
        #: checkpoints, so that a resumed run draws as the interrupted one would have)
        self.tile_errors: TileErrors | None = None
        if self.sampling.error_share > 0:
            if hw is None:
                raise ConfigError("train.error_sampling needs the image size (hw)")
            self.tile_errors = TileErrors(hw, self.sampling.error_tile, self.sampling.error_share)
            self.register_buffer(
                "tile_error", torch.full((num_frames, self.tile_errors.num_tiles), -1.0)
            )
        #: the :class:`~nsff_core.model.data.FrameSampler` that draws the training pixels (set by
        #: the trainer; hard sampling hands it new weights)
        self.pixel_sampler = None
        #: the render random state of a checkpoint being resumed, until training starts
        self._resumed_rng: dict[str, Tensor] | None = None
        #: (N, H, W, 3) training frames in [0, 1], for the hard-sampling weights (set by the
        #: trainer)
        self.training_frames: Tensor | None = None
        #: factor on both learning rates (``lr``, ``grid_lr``): 0.5 after a divergence retry
        #: (set by the trainer; not a hyper-parameter, so rendering never depends on it)
        self.lr_scale = 1.0
        #: every loss term of the last training step by name (as :func:`loss_terms`, plus
        #: ``field_regularization`` and ``total``), detached; the mean over the ranks under
        #: DDP, so that every rank sees the same values (read by the divergence guard)
        self.step_losses: dict[str, Tensor] = {}
        #: the renderer of :meth:`render` (a compiled one under ``train.compile: render``)
        self.render_rays = render_rays
        #: fused Adam: one kernel per step over all parameters (on the CPU too, where it is
        #: 2-3 times faster than the default per-tensor loop), which under device-resident
        #: training also skips a step whose ``found_inf`` flag the divergence guard set, without
        #: a host read; False: plain Adam (same update)
        self.fused_adam = True
        K_t = torch.as_tensor(self.meta.K, dtype=torch.float32)
        c2w_t = torch.as_tensor(self.meta.c2w).float()
        self.register_buffer("K", K_t, persistent=False)
        self.register_buffer("P", projection_matrices(K_t, c2w_t), False)

    def render(self, origins: Tensor, dirs: Tensor, t: Tensor, training: bool) -> RenderOutput:
        return self.render_rays(
            self.static_field,
            self.dynamic_field,
            origins,
            dirs,
            t,
            self.render_cfg,
            training=training,
        )

    def training_step(self, batch: RayBatch, batch_idx: int) -> Tensor:
        out = self.render(batch.origins, batch.dirs, batch.t, training=True)
        terms = loss_terms(out, batch, self.P, self.K, self.cfg.thickness, self.disparity_movers)
        reg = self.field_regularization(self.global_step)
        if reg is not None:
            terms["field_regularization"] = reg
        if self.loss_weights.canonical > 0:
            terms["canonical"] = canonical_term(out)
        if self.loss_weights.mover_disparity > 0:  # not computed at weight 0 (the default)
            terms["mover_disparity"] = mover_disparity_term(out, batch)
        weights = L.weights_at(
            step=self.global_step, steps_per_epoch=self.steps_per_epoch, base=self.loss_weights
        )
        loss = L.total_loss(terms, weights)
        if self.tile_errors is not None:
            error = (out.image.rgb.detach().float() - batch.rgb.float()).square().mean(-1)
            all_ranks = dist_world()[1] > 1
            self.tile_errors.update(self.tile_error, batch.t, batch.pixel, error, all_ranks)
        if self.sampling.hard_sampling:
            self.last_rgb[batch.t, batch.pixel] = out.image.rgb.detach().float()
            self.last_step[batch.t, batch.pixel] = self.global_step
        logs = {f"loss/{k}": v.detach().float() for k, v in terms.items()}
        logs["loss/total"] = loss.detach().float()
        _, world = dist_world()
        if world > 1:  # the mean over the ranks' batches, in one collective
            values = torch.stack(list(logs.values()))
            torch.distributed.all_reduce(values)
            logs = dict(zip(logs, values / world, strict=True))
        # a NaN on any rank makes the mean NaN: all ranks see the same divergence
        self.step_losses = {k.removeprefix("loss/"): v for k, v in logs.items()}
        logs["train/psnr"] = psnr(logs["loss/color"])
        self.log_dict(logs, on_step=True, prog_bar=False, batch_size=len(batch.t))
        return loss

    def field_regularization(self, step: int) -> Tensor | None:
        """The plane fields' regulariser at ``step`` (None for MLP fields, skipped steps and a
        zero weight ``grid_tv``, where it would cost a pass over every plane, forward and
        backward, for nothing).

        With ``grid_tv_every`` k it is computed on every k-th step only, times k: the same pull
        on average at 1/k of the cost. Example: k = 4 -> steps 0, 4, 8, ... at 4x the value.
        """
        every = self.cfg.grid_tv_every
        if self.cfg.field != "planes" or self.cfg.grid_tv == 0 or step % every:
            return None
        return every * (self.static_field.regularization() + self.dynamic_field.regularization())

    def state_digest(self) -> str:
        """SHA-1 of the weights and persistent buffers (the checkpoint's state_dict)."""
        h = hashlib.sha1()
        for name, value in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the pixel sampler's state and the random state of the render's jitter and
        density noise, so that a resumed run continues the ray stream (and draws the same
        samples along the rays) instead of drawing the first batches of the run again.

        Under DDP (called on every rank) ``pixel_sampler`` and ``render_rng`` are rank 0's, and
        ``ddp`` holds ``world_size`` and, per rank, its sampler state, its render random state
        and :meth:`state_digest`.
        """
        checkpoint["lr_scale"] = self.lr_scale
        sampler = self.pixel_sampler
        rng = render_rng_state(self.device)
        checkpoint["render_rng"] = rng
        state = None if sampler is None else sampler.state()
        if state is not None:
            checkpoint["pixel_sampler"] = state
        rank, world = dist_world()
        if world == 1:
            return
        ranks: list[Any] = [None] * world
        mine = {"pixel_sampler": state, "render_rng": rng, "state_digest": self.state_digest()}
        torch.distributed.all_gather_object(ranks, mine)
        if state is not None:
            checkpoint["pixel_sampler"] = ranks[0]["pixel_sampler"]
        checkpoint["ddp"] = {"world_size": world, "ranks": ranks}
        if rank == 0 and len({r["state_digest"] for r in ranks}) > 1:
            log.warning("train: the DDP ranks' weights differ at step %d", self.global_step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore this rank's pixel-sampler state and keep its render random state for
        :meth:`on_train_start` (rank r of a DDP run: the r-th saved; the random state only where
        the number of ranks is the same), and bring the saved learning rates to
        :attr:`lr_scale` (see :func:`rescale_learning_rates`)."""
        ratio = self.lr_scale / float(checkpoint.get("lr_scale", 1.0))
        if ratio != 1.0:
            rescale_learning_rates(checkpoint, ratio)
        set_fused_adam(checkpoint, self.fused_adam)
        rank, world = dist_world()
        ddp = checkpoint.get("ddp")
        rngs = (
            [r.get("render_rng") for r in ddp["ranks"]] if ddp else [checkpoint.get("render_rng")]
        )
        if len(rngs) == world and rngs[rank] is not None:
            # set once the module is on its device (Lightning restores before moving it)
            self._resumed_rng = rngs[rank]
        if self.pixel_sampler is None:
            return
        if ddp is not None:
            states = [r["pixel_sampler"] for r in ddp["ranks"]]
        elif "pixel_sampler" in checkpoint:
            states = [checkpoint["pixel_sampler"]]
        else:
            return
        if len(states) != world:
            log.warning(
                "train: the checkpoint has the ray streams of %d process(es), this run has %d;"
                " rank %d starts its stream afresh",
                len(states),
                world,
                rank,
            )
            if rank >= len(states):
                return
        if not self.pixel_sampler.load_state(states[rank]):
            log.warning(
                "train: the checkpoint's ray stream was drawn by another kind of sampler (host"
                " or device, train.device_resident); rank %d starts its stream afresh",
                rank,
            )

    def on_train_start(self) -> None:
        if self._resumed_rng is not None:
            set_render_rng_state(self._resumed_rng, self.device)
            self._resumed_rng = None
        if self.sampling.hard_sampling and self.pixel_sampler is not None:
            self.pixel_sampler.set_weights(self.hard_weights)
        self._refresh_error_weights()

    def _refresh_error_weights(self) -> None:
        """Hand the pixel sampler the weights of the tiles' running errors (error sampling)."""
        if self.tile_errors is not None and self.pixel_sampler is not None:
            self.pixel_sampler.set_weights(self.tile_errors.pixel_weights(self.tile_error))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        if step % ERROR_SAMPLING_EVERY == 0:
            self._refresh_error_weights()
        every = self.sampling.hard_sampling_every
        if self.sampling.hard_sampling and step > 0 and step % every == 0:
            if self.training_frames is None:
                raise RuntimeError("hard sampling needs system.training_frames (N, H, W, 3)")
            self.update_hard_weights(self.training_frames)

    @torch.no_grad()
    def merge_last_predictions(self) -> None:
        """DDP: every rank's ``last_rgb`` := the newest prediction of each pixel over all ranks
        (the mean where ranks drew a pixel at the same step)."""
        _, world = dist_world()
        if world == 1:
            return
        dist = torch.distributed
        newest = self.last_step.clone()
        dist.all_reduce(newest, op=dist.ReduceOp.MAX)
        mine = (self.last_step == newest) & (newest >= 0)
        count = mine.float()
        dist.all_reduce(count)
        rgb = torch.where(mine[..., None], self.last_rgb, torch.zeros_like(self.last_rgb))
        dist.all_reduce(rgb)
        self.last_rgb.copy_(rgb / count.clamp_min(1)[..., None])
        self.last_step.copy_(newest)

    @torch.no_grad()
    def update_hard_weights(self, frames: Tensor) -> None:
        """Hard-sampling weights := 1 - SSIM map (real SSIM, in [0, 2]) between each training
        frame and the last prediction of its pixels, plus 0.01 so that no pixel is never drawn.
        Pixels not drawn yet hold a black prediction and so get a high weight.

        Under DDP (called on every rank at the same step) the predictions of all ranks are
        merged, rank 0 computes the weights and broadcasts them, so that all ranks sample
        with the same weights."""
        from .metrics import ssim_map

        self.merge_last_predictions()
        rank, world = dist_world()
        h, w = frames.shape[1:3]
        if rank == 0:
            for t in range(frames.shape[0]):
                pred = self.last_rgb[t].reshape(h, w, 3)
                smap = ssim_map(pred, frames[t].to(pred.device))
                self.hard_weights[t] = (1.0 - smap).clamp_min(0).reshape(-1).to(
                    self.hard_weights
                ) + 0.01
        if world > 1:
            torch.distributed.broadcast(self.hard_weights, src=0)
        if self.pixel_sampler is not None:
            self.pixel_sampler.set_weights(self.hard_weights)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, idx: int) -> Any:
        return batch.to(device) if isinstance(batch, RayBatch) else batch

    def configure_optimizers(self) -> Any:
        grids = [
            p
            for f in (self.static_field, self.dynamic_field)
            for p in getattr(f, "grid_parameters", list)()
        ]
        grid_ids = {id(p) for p in grids}
        groups = [{"params": [p for p in self.parameters() if id(p) not in grid_ids]}]
        if grids:
            groups.append({"params": grids, "lr": self.cfg.grid_lr * self.lr_scale})
        fused = {"fused": True} if self.fused_adam else {}
        opt = torch.optim.Adam(groups, lr=self.cfg.lr * self.lr_scale, eps=1e-8, **fused)
        total = max(1, self.trainer.max_steps if self.trainer.max_steps > 0 else 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def rescale_learning_rates(checkpoint: dict[str, Any], factor: float) -> None:
    """Multiply the learning rates saved in a Lightning checkpoint dict by ``factor``, in place:
    every optimizer parameter group's ``lr`` and ``initial_lr`` and every scheduler's
    ``base_lrs`` and ``_last_lr``, so that the restored cosine schedule continues at the new
    scale (Lightning restores the optimizer and scheduler from this dict after the module's
    ``on_load_checkpoint``)."""
    for opt in checkpoint.get("optimizer_states", []):
        for group in opt.get("param_groups", []):
            for key in ("lr", "initial_lr"):
                if key in group:
                    group[key] = group[key] * factor
    for sched in checkpoint.get("lr_schedulers", []):
        for key in ("base_lrs", "_last_lr"):
            if key in sched:
                sched[key] = [v * factor for v in sched[key]]


def set_fused_adam(checkpoint: dict[str, Any], fused: bool) -> None:
    """Make the optimizer state of a Lightning checkpoint dict restore as fused Adam or not,
    in place (:attr:`NSFFSystem.fused_adam`; a checkpoint from before fused Adam on the CPU
    holds plain Adam's state): Lightning restores the saved parameter groups, ``fused`` flag
    included, after the module's ``on_load_checkpoint``. Plain Adam keeps its step counts on
    the CPU, so they move there when ``fused`` is off."""
    for opt in checkpoint.get("optimizer_states", []):
        groups = opt.get("param_groups", [])
        if all(bool(g.get("fused")) == fused for g in groups):
            continue
        for group in groups:
            group["fused"] = True if fused else None
        if not fused:
            for state in opt.get("state", {}).values():
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].cpu()
