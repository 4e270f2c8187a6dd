"""The backends of the prior stages (and of LPIPS), one record each: the one place that says
which backends exist, which checkpoints they need, whether they want a GPU and what runs them.

Everything else reads this table:

- the stages dispatch on it: :func:`~nsff_core.priors.flow.compute_flow`,
  :func:`~nsff_core.priors.masks.compute_masks` and :func:`~nsff_core.priors.depth.compute_depth`
  call the ``run`` function of the record named by ``cfg.backend``;
- the rule ``weights`` fetches what :func:`weights_request` and :func:`weights_table` name (the
  latter is :data:`nsff_core.priors.weights.registry.BACKEND_WEIGHTS`), and the rule
  ``weights_evaluate`` what :func:`metric_request` names (LPIPS, for rule ``evaluate``);
- ``rules/common.smk`` asks :func:`needs_gpu` for the GPU and memory resources of a prior rule;
- ``tests/test_backends.py`` checks that the ``backend`` enums of the config and sheet schemas
  are :func:`names` of each stage.

A record's ``run`` is a ``"module:function"`` string, imported only when a stage runs, so that
this module stays free of torch and OpenCV: Snakemake imports it at start-up (through
``common.smk``) in every invocation and every cluster job. A stage's run functions all take the
arguments of the stage function that dispatches to them (e.g. those of ``compute_flow``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: the stages whose rules pick a backend by the ``backend`` setting (config or sheet column)
PRIOR_STAGES = ("flow", "masks", "depth")
#: the stage of the image-quality metric that needs checkpoints (LPIPS, rule ``evaluate``)
METRIC_STAGE = "evaluate"


@dataclass(frozen=True)
class Backend:
    """One way to compute a stage.

    Attributes:
        stage: ``flow``, ``masks``, ``depth`` (a prior rule) or ``evaluate`` (a metric).
        name: the value of the stage's ``backend`` setting that picks it.
        run: ``"module:function"`` that computes the stage with this backend; its arguments are
            those of the stage function (``compute_flow``, ``compute_masks``, ``compute_depth``).
        weights: names of the checkpoints it needs (keys of
            :data:`nsff_core.priors.weights.registry.REGISTRY`); empty for a weights-free backend.
        gpu: whether its rule asks for a GPU (and more memory).
        model_setting: the stage setting that picks one of several checkpoints (``dpt_model``),
            if any; ``models`` maps each of its values to that value's checkpoints, and
            ``weights`` are then those of the setting's default.
        models: see ``model_setting``.
    """

    stage: str
    name: str
    run: str
    weights: tuple[str, ...] = ()
    gpu: bool = False
    model_setting: str | None = None
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        """Whether it needs a checkpoint (fetched by the rule ``weights``)."""
        return bool(self.weights)

    def load(self) -> Callable[..., Any]:
        """The function named by ``run`` (its module is imported now)."""
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


_P = "nsff_core.priors."

#: Every backend, stage by stage; within a stage in the order the schemas' enums list them.
REGISTRY: tuple[Backend, ...] = (
    Backend("flow", "dis", _P + "flow:dis_flow"),
    Backend("flow", "raft", _P + "flow:pretrained_flow", ("raft_large",), gpu=True),
    Backend("masks", "rigidity", _P + "masks:motion_masks"),
    Backend("masks", "epipolar", _P + "masks:motion_masks"),
    Backend("masks", "none", _P + "masks:motion_masks"),
    Backend("masks", "maskrcnn", _P + "masks:pretrained_masks", ("maskrcnn_v2_coco",), gpu=True),
    Backend(
        "masks", "detectron2", _P + "masks:pretrained_masks", ("detectron2_r50_fpn_3x",), gpu=True
    ),
    Backend("depth", "sparse", _P + "depth:sparse_depth"),
    Backend(
        "depth",
        "dpt",
        _P + "depth:pretrained_depth",
        ("dpt_large",),
        gpu=True,
        model_setting="dpt_model",
        models={"dpt_large": ("dpt_large",), "dpt_hybrid": ("dpt_hybrid",)},
    ),
    # LPIPS (AlexNet v0.1) of rule evaluate: its rule always has a GPU; rule weights_evaluate
    # resolves the weights (optional: without them LPIPS is skipped, nsff_core.workflow.stages.evaluate.Scorer)
    Backend(
        "evaluate",
        "lpips",
        "nsff_core.workflow.stages.evaluate:load_lpips",
        ("alexnet", "lpips_alex"),
    ),
)

_BY_KEY: dict[tuple[str, str], Backend] = {(b.stage, b.name): b for b in REGISTRY}


def get(stage: str, name: str | None) -> Backend | None:
    """The record of backend ``name`` of ``stage``, or ``None`` when there is none."""
    return _BY_KEY.get((stage, name)) if isinstance(name, str) else None


def names(stage: str, pretrained: bool | None = None) -> tuple[str, ...]:
    """The backends of ``stage`` in registry order; only the pretrained (``True``) or the
    weights-free (``False``) ones when ``pretrained`` is given."""
    return tuple(
        b.name
        for b in REGISTRY
        if b.stage == stage and (pretrained is None or b.pretrained == pretrained)
    )


def needs_gpu(stage: str, name: str | None) -> bool:
    """Whether the rule of ``stage`` wants a GPU for backend ``name`` (unknown: no)."""
    b = get(stage, name)
    return b is not None and b.gpu


def run_function(stage: str, name: str, fallback: Callable[..., Any]) -> Callable[..., Any]:
    """The function that computes ``stage`` with backend ``name``.

    An unknown name gets ``fallback``, the stage's weights-free path, which reports it in the
    stage's own words (after the checks that come first there).
    """
    b = get(stage, name)
    return fallback if b is None else b.load()


def weights_table() -> dict[tuple[str, str], tuple[str, ...]]:
    """Checkpoints per (stage, key), for :func:`nsff_core.priors.weights.registry.needed_weights`.

    The key is a backend's name, or a value of its ``model_setting`` (what
    :func:`weights_request` sends for such a backend). Weights-free backends are left out.
    """
    table: dict[tuple[str, str], tuple[str, ...]] = {}
    for b in REGISTRY:
        if b.weights:
            table[(b.stage, b.name)] = b.weights
        for model, files in b.models.items():
            table[(b.stage, model)] = files
    return table


def weights_request(settings: Callable[[str], Mapping[str, Any]]) -> dict[str, Any]:
    """What the rule ``weights`` fetches for a scene: prior stage -> key of :func:`weights_table`.

    Args:
        settings: stage -> the scene's settings of that stage as given (config and sheet,
            without defaults: ``backend`` absent or ``None`` means the stage's default, which
            :func:`~nsff_core.priors.weights.registry.needed_weights` fills in).

    Returns:
        ``{"flow": ..., "masks": ..., "depth": ...}``: the backend's name, or, for a backend
        with a ``model_setting`` (DPT), that setting's value (its default filled in).
    """
    from ..config import stage_config

    request: dict[str, Any] = {}
    for stage in PRIOR_STAGES:
        values = settings(stage)
        name = values.get("backend")
        b = get(stage, name)
        if b is not None and b.model_setting:
            request[stage] = getattr(stage_config(stage, values), b.model_setting)
        else:
            request[stage] = name
    return request


def metric_request() -> dict[str, str]:
    """What the rule ``weights_evaluate`` fetches for a scene: ``{"evaluate": "lpips"}``, the
    metric backend of :data:`METRIC_STAGE` (a key of :func:`weights_table`); it takes no
    setting, since ``evaluate`` always scores LPIPS when its weights are at hand."""
    (name,) = names(METRIC_STAGE)
    return {METRIC_STAGE: name}
