"""The typed views of the ``train`` settings: the one place where the flat
:class:`~nsff_core.config.TrainConfig` is cut into the model's sub-configs.

``config.yaml`` keeps the train section flat (``train.num_samples``, ``train.grid_levels``, ...):
users, presets and sheet columns name those keys. The model's parts each take their own typed
config; these functions build them, so that which setting goes where is decided here only:

- :func:`mlp_field_config` -> :class:`~nsff_core.model.fields.FieldConfig` (field ``mlp``)
- :func:`plane_field_config` -> :class:`~nsff_core.model.fields_planes.PlaneFieldConfig`
  (field ``planes``)
- :func:`render_config` -> :class:`~nsff_core.model.render.RenderConfig`
- :func:`loss_weights` -> :class:`~nsff_core.model.losses.LossWeights`
- :func:`sampler_config` -> :class:`~nsff_core.model.data.SamplerConfig`

They live in the model library rather than as methods of ``TrainConfig`` because the
sub-configs are model types (``nsff_core.model`` imports ``nsff_core.config``, never the other
way round) and take their defaults from ``TrainConfig``.
"""

from __future__ import annotations

from nsff_core.config import TrainConfig, resolve_static_last_delta

from .data import SamplerConfig
from .fields import FieldConfig
from .fields_planes import PlaneFieldConfig
from .losses import LossWeights
from .render import RenderConfig


def mlp_field_config(cfg: TrainConfig) -> FieldConfig:
    """The MLP fields' sizes (a skip connection at the middle layer, as nsff_pl's 4 of 8)."""
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


def plane_field_config(
    cfg: TrainConfig, extent: tuple[float, float] = (1.0, 1.0)
) -> PlaneFieldConfig:
    """The plane fields' sizes; ``extent``: the NDC half-widths (x, y) the planes cover."""
    return PlaneFieldConfig(
        base_resolution=cfg.grid_base_resolution,
        levels=cfg.grid_levels,
        dynamic_levels=cfg.grid_dynamic_levels,
        motion_levels=cfg.grid_motion_levels,
        motion_resolution=cfg.grid_motion_resolution,
        frame_code=cfg.grid_frame_code,
        detail_levels=cfg.grid_detail_levels,
        frame_texture=cfg.grid_frame_texture,
        texture_warped=cfg.grid_frame_texture_warped,
        texture_density=cfg.grid_frame_texture_density,
        image_resolution=cfg.grid_image_resolution,
        channels=cfg.grid_channels,
        hidden=cfg.grid_hidden,
        dir_freqs=cfg.dir_freqs,
        use_viewdir=cfg.use_viewdir,
        flow_scale=cfg.flow_scale,
        extent=tuple(extent),
    )


def render_config(cfg: TrainConfig) -> RenderConfig:
    """Ray sampling of training and rendering (the other settings keep their defaults)."""
    return RenderConfig(
        num_samples=cfg.num_samples,
        noise_std=cfg.noise_std,
        warp_every=cfg.warp_every,
        # auto is decided where the scene is trained (rule train); a system built without its
        # scene (a test, a throughput benchmark) gets the value of a camera filmed sideways
        static_last_delta=resolve_static_last_delta(cfg.static_last_delta, None),
    )


def loss_weights(cfg: TrainConfig) -> LossWeights:
    """The base loss weights and schedule; the field regulariser's weight is ``grid_tv`` for
    plane fields and 0 for MLP fields (which have none)."""
    return LossWeights(
        lambda_geo_init=cfg.lambda_geo_init,
        lambda_geo_decay_every=cfg.lambda_geo_decay_every,
        disparity=cfg.lambda_disparity,
        minimal_flow=cfg.lambda_minimal_flow,
        mask=cfg.lambda_mask,
        distortion=cfg.lambda_distortion,
        canonical=cfg.lambda_canonical,
        mover_disparity=cfg.lambda_mover_disparity,
        field_regularization=cfg.grid_tv if cfg.field == "planes" else 0.0,
    )


def sampler_config(cfg: TrainConfig, rank: int = 0) -> SamplerConfig:
    """How the training pixels of process ``rank`` are drawn: under DDP every rank has its own
    stream, seeded ``cfg.seed + rank``."""
    return SamplerConfig(
        batch_size=cfg.batch_size,
        seed=cfg.seed + rank,
        dynamic_share=cfg.dynamic_sampling,
        hard_sampling=cfg.hard_sampling,
        hard_sampling_every=cfg.hard_sampling_every,
        error_share=cfg.error_sampling,
        error_tile=cfg.error_sampling_tile,
    )
