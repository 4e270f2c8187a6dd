"""A minimal in-memory training loop for quality-floor tests (no Lightning, no files)."""

import dataclasses

import torch

from nsff_core.model import losses as L
from nsff_core.model.data import FrameSampler, make_batch
from nsff_core.model.train_views import sampler_config


def fit_in_memory(system, data, steps: int, steps_per_epoch: int = 100, seed: int = 0) -> None:
    """Train ``system`` (an NSFFSystem with plane fields) on ``data`` for ``steps`` steps with
    Adam at ``cfg.lr`` (decoders) and ``cfg.grid_lr`` (planes), batches as in training
    (including ``cfg.dynamic_sampling``), and the loss schedule at ``steps_per_epoch``."""
    cfg = system.cfg
    grid = [p for n, p in system.named_parameters() if "planes" in n]
    rest = [p for n, p in system.named_parameters() if "planes" not in n]
    opt = torch.optim.Adam([{"params": rest}, {"params": grid, "lr": cfg.grid_lr}], lr=cfg.lr)
    sampling = dataclasses.replace(sampler_config(cfg), seed=seed)
    sampler = FrameSampler.from_config(sampling, data.num_frames, data.hw, data.dynamic)
    from nsff_core.model.system import loss_terms

    for step in range(steps):
        t = sampler.next_frame()
        batch = make_batch(data, t, sampler.next_pixels(t))
        out = system.render(batch.origins, batch.dirs, batch.t, training=True)
        terms = loss_terms(out, batch, system.P, system.K, cfg.thickness)
        loss = L.total_loss(terms, L.weights_at(step=step, steps_per_epoch=steps_per_epoch))
        opt.zero_grad()
        loss.backward()
        opt.step()
