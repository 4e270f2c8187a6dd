"""The backend registry (nsff_core/priors/backends.py) is the one list of backends: the schemas'
enums, the dispatch of the stages, the GPU resources and the weights rule all agree with it."""

from __future__ import annotations

import inspect

import pytest
import yaml

from nsff_core.priors import backends as B
from nsff_core.priors import weights as W

from .conftest import REPO

SCHEMAS = REPO / "rules" / "schemas"
#: the function of each prior stage that dispatches to its backends' run functions
STAGE_FUNCTIONS = {
    "flow": "nsff_core.priors.flow:compute_flow",
    "masks": "nsff_core.priors.masks:compute_masks",
    "depth": "nsff_core.priors.depth:compute_depth",
}


@pytest.mark.parametrize("stage", B.PRIOR_STAGES)
def test_schema_enums_are_the_registry_names(stage):
    config = yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())
    sheet = yaml.safe_load((SCHEMAS / "scenes.schema.yaml").read_text())
    assert config["properties"][stage]["properties"]["backend"]["enum"] == list(B.names(stage))
    assert sheet["properties"][stage]["enum"] == list(B.names(stage))


@pytest.mark.parametrize("stage", B.PRIOR_STAGES)
def test_run_functions_take_the_stage_functions_arguments(stage):
    dispatcher = B.Backend(stage, "-", STAGE_FUNCTIONS[stage]).load()
    want = list(inspect.signature(dispatcher).parameters)
    for name in B.names(stage):
        run = B.get(stage, name).load()
        assert list(inspect.signature(run).parameters) == want, (stage, name, run)


def test_records_are_unique_and_their_weights_are_registered():
    keys = [(b.stage, b.name) for b in B.REGISTRY]
    assert len(keys) == len(set(keys))
    for b in B.REGISTRY:
        assert set(b.weights) <= set(W.REGISTRY), b
        for files in b.models.values():
            assert set(files) <= set(W.REGISTRY), b
        if b.model_setting:  # the default model's checkpoints are the record's
            from nsff_core.config import stage_config

            default = getattr(stage_config(b.stage, {}), b.model_setting)
            assert b.models[default] == b.weights, b
        if b.stage in B.PRIOR_STAGES:  # a prior's checkpoint runs on a GPU
            assert b.gpu == b.pretrained, b


def test_gpu_and_weights_follow_the_records():
    assert B.needs_gpu("flow", "raft") and not B.needs_gpu("flow", "dis")
    assert not B.needs_gpu("flow", "") and not B.needs_gpu("flow", None)
    assert B.names("masks", pretrained=True) == ("maskrcnn", "detectron2")
    assert W.BACKEND_WEIGHTS == B.weights_table()
    for b in B.REGISTRY:
        assert W.needed_weights({b.stage: b.name}) == list(b.weights)


def test_lpips_record_names_the_files_evaluate_looks_for():
    from nsff_core.model import metrics
    from nsff_core.workflow.stages import evaluate

    lpips = B.get("evaluate", "lpips")
    backbone, linear = (W.REGISTRY[n].file for n in lpips.weights)
    assert backbone in metrics.LPIPS_BACKBONE_FILES
    assert linear in metrics.LPIPS_LINEAR_FILES
    assert lpips.load() is evaluate.load_lpips


@pytest.mark.parametrize(
    "settings, request_",
    [
        ({}, {"flow": None, "masks": None, "depth": None}),
        (
            {"flow": {"backend": "raft"}, "masks": {"backend": "none"}},
            {"flow": "raft", "masks": "none", "depth": None},
        ),
        ({"depth": {"backend": "dpt"}}, {"flow": None, "masks": None, "depth": "dpt_large"}),
        (
            {"depth": {"backend": "dpt", "dpt_model": "dpt_hybrid"}},
            {"flow": None, "masks": None, "depth": "dpt_hybrid"},
        ),
        ({"depth": {"dpt_model": "dpt_hybrid"}}, {"flow": None, "masks": None, "depth": None}),
    ],
)
def test_weights_request_names_what_the_weights_rule_fetches(settings, request_):
    got = B.weights_request(lambda stage: settings.get(stage, {}))
    assert got == request_
    assert list(got) == list(B.PRIOR_STAGES)


def test_weights_request_of_dpt_hybrid_fetches_its_checkpoint():
    request_ = B.weights_request(
        lambda stage: {"backend": "dpt", "dpt_model": "dpt_hybrid"} if stage == "depth" else {}
    )
    assert W.needed_weights(request_) == ["dpt_hybrid"]


@pytest.mark.parametrize("stage", B.PRIOR_STAGES)
def test_an_unknown_backend_gets_the_fallback(stage):
    def fallback():
        return None

    assert B.run_function(stage, "no_such_backend", fallback) is fallback
    name = B.names(stage)[0]
    assert B.run_function(stage, name, fallback) is B.get(stage, name).load()


def test_metric_request_names_the_lpips_checkpoints_of_rule_weights_evaluate():
    request_ = B.metric_request()
    assert request_ == {B.METRIC_STAGE: "lpips"}
    assert W.needed_weights(request_) == list(B.get("evaluate", "lpips").weights)
    assert W.needed_weights(request_) == ["alexnet", "lpips_alex"]
