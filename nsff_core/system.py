"""The NSFF LightningModule: wiring of fields, renderer and losses (no file IO).

One training step renders a :class:`~nsff_core.data.RayBatch` of one frame t with the warped
renders to t +- 1, computes every loss term of NSFF_SPEC section 5 as its own function
(:mod:`nsff_core.losses`) and sums them with the epoch's weights (:func:`losses.weights_at`).
Terms that need a neighbour frame are masked at the first and last frame (nsff_pl was not).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from . import losses as L
from .config import TrainConfig, from_dict
from .data import RayBatch
from .fields import DynamicField, FieldConfig, StaticField
from .rays import ndc_to_world, projection_matrices
from .render import RenderConfig, RenderOutput, render_rays

Tensor = torch.Tensor


def field_config(cfg: TrainConfig) -> FieldConfig:
    return FieldConfig(
        width=cfg.width,
        depth=cfg.depth,
        skips=(cfg.depth // 2,) if cfg.depth > 2 else (),
        xyz_freqs=cfg.xyz_freqs,
        dir_freqs=cfg.dir_freqs,
        time_dim=cfg.time_dim,
        use_viewdir=cfg.use_viewdir,
        flow_scale=cfg.flow_scale,
    )


def render_config(cfg: TrainConfig) -> RenderConfig:
    return RenderConfig(num_samples=cfg.num_samples, noise_std=cfg.noise_std)


def loss_terms(
    out: RenderOutput, batch: RayBatch, P: Tensor, K: Tensor, thickness: int
) -> dict[str, Tensor]:
    """Every loss term of one training batch (names as :data:`losses.TERMS`).

    Args:
        out: training render (with ``out.fw`` and ``out.bw``).
        batch: the rays and their targets.
        P: (N, 3, 4) NSFF world -> pixel projection of every frame.
        K: (3, 3) training intrinsics (for NDC -> world).
    """
    assert out.fw is not None and out.bw is not None, "loss_terms needs a training render"
    X = ndc_to_world(out.points, K)
    X_fw = ndc_to_world(out.fw.points, K)
    X_bw = ndc_to_world(out.bw.points, K)
    fw_valid = out.fw.valid & batch.flow_fw_valid
    bw_valid = out.bw.valid & batch.flow_bw_valid
    both = out.fw.valid & out.bw.valid
    return {
        "color": L.color_loss(out.rgb, batch.rgb),
        "disparity": L.disparity_loss(out.depth, batch.disp),
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
            out.fw.rgb, batch.rgb, out.fw.disocclusion, out.fw.valid
        ),
        "photometric_bw": L.photometric_warp_loss(
            out.bw.rgb, batch.rgb, out.bw.disocclusion, out.bw.valid
        ),
        "cycle_fw": L.cycle_loss(
            out.points, out.fw.cycle_points, out.fw.disocclusion_samples, out.fw.valid
        ),
        "cycle_bw": L.cycle_loss(
            out.points, out.bw.cycle_points, out.bw.disocclusion_samples, out.bw.valid
        ),
        "temporal_smoothness": L.temporal_smoothness(X, X_fw, X_bw, both),
        "minimal_flow": L.minimal_flow(X, X_fw, X_bw),
        "spatial_smoothness": L.spatial_smoothness(X, X_fw, X_bw),
        "entropy": L.entropy_loss(out.dynamic_weights),
        "cross_entropy": L.cross_entropy_thickness_loss(
            out.dynamic_weights, out.static_weights, thickness
        ),
    }


def psnr(mse: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (dB) of a mean squared error of images in [0, 1]."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


class NSFFSystem(pl.LightningModule):
    """Static + dynamic fields of one scene and their training step.

    Args:
        cfg: training settings (a dict of :class:`TrainConfig` fields, as stored in checkpoints).
        num_frames: N.
        K: (3, 3) training intrinsics (nested list or array).
        c2w: (N, 4, 4) training poses, NSFF world and axes (nested list or array).
        steps_per_epoch: for the loss schedule.
        normalization: ``SceneNormalization.to_dict()`` (kept in the checkpoint for rendering).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        num_frames: int,
        K: list,
        c2w: list,
        steps_per_epoch: int,
        normalization: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = from_dict(TrainConfig, cfg)
        # every argument is plain data (lists, dicts), so checkpoints reload without our types
        self.save_hyperparameters()
        fcfg = field_config(self.cfg)
        self.static_field = StaticField(fcfg)
        self.dynamic_field = DynamicField(fcfg, num_frames)
        self.render_cfg = render_config(self.cfg)
        self.loss_weights = L.LossWeights(
            lambda_geo_init=self.cfg.lambda_geo_init,
            lambda_geo_decay_every=self.cfg.lambda_geo_decay_every,
        )
        self.steps_per_epoch = steps_per_epoch
        K_t = torch.as_tensor(np.asarray(K), dtype=torch.float32)
        self.register_buffer("K", K_t, persistent=False)
        self.register_buffer("P", projection_matrices(K_t, torch.as_tensor(c2w).float()), False)

    def render(self, origins: Tensor, dirs: Tensor, t: Tensor, training: bool) -> RenderOutput:
        return render_rays(
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
        terms = loss_terms(out, batch, self.P, self.K, self.cfg.thickness)
        weights = L.weights_at(
            step=self.global_step, steps_per_epoch=self.steps_per_epoch, base=self.loss_weights
        )
        loss = L.total_loss(terms, weights)
        logs = {f"loss/{k}": v.detach() for k, v in terms.items()}
        logs["loss/total"] = loss.detach()
        logs["train/psnr"] = psnr(terms["color"].detach())
        self.log_dict(logs, on_step=True, prog_bar=False, batch_size=len(batch.t))
        return loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, idx: int) -> Any:
        return batch.to(device) if isinstance(batch, RayBatch) else batch

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.cfg.lr, eps=1e-8)
        total = max(1, self.trainer.max_steps if self.trainer.max_steps > 0 else 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
