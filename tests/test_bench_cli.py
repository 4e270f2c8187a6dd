"""Command-line parsing of the benchmark scripts (they are run by hand, so nothing else checks it)."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_demo_set_reads_numbers_that_yaml_reads_as_text():
    parse = _load("train_demo").parse_settings
    got = parse(["lr=5e-4", "grid_lr=0.04", "max_steps=1450", "grid_dynamic=deform", "x=nan"])
    assert got == {
        "lr": 5e-4,
        "grid_lr": 0.04,
        "max_steps": 1450,
        "grid_dynamic": "deform",
        "x": "nan",
    }
    assert isinstance(got["lr"], float) and isinstance(got["max_steps"], int)


@pytest.mark.parametrize("item", ["lr", "=5"])
def test_train_demo_set_refuses_an_item_without_key_and_value(item):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _load("train_demo").parse_settings([item])
