"""Workflow configuration: validation of ``config.yaml`` and of the scene sheet, and the
per-scene settings of every stage (global config with the sheet's overrides applied).

The JSON schemas live in ``rules/schemas/``; the workflow passes their paths. Everything here is
plain Python so that tests exercise exactly what the workflow runs at start-up.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: sheet columns that override a stage setting: column -> (stage, key)
OVERRIDES: dict[str, tuple[str, str]] = {
    "start": ("frames", "start"),
    "end": ("frames", "end"),
    "stride": ("frames", "stride"),
    "max_frames": ("frames", "max_frames"),
    "width": ("frames", "width"),
    "height": ("frames", "height"),
    "flow": ("flow", "backend"),
    "masks": ("masks", "backend"),
    "depth": ("depth", "backend"),
    "dynamic_classes": ("masks", "classes"),
}

SYNTHETIC_PREFIX = "synthetic:"


def _load_yaml(path: str | Path) -> Any:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def _format_error(err, kind: str = "key") -> str:
    loc = ".".join(str(p) for p in err.absolute_path)
    return f"{kind} '{loc}': {err.message}" if loc else err.message


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Check ``config`` against the config schema; raise :class:`ConfigError` naming the key."""
    import jsonschema

    schema = _load_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration: " + "; ".join(_format_error(e) for e in errors))


def _coerce(value: str, spec: dict, column: str, where: str) -> Any:
    kind = spec.get("type")
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise ConfigError(f"{where}: column '{column}' must be an integer, got {value!r}")
        return int(value)
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            raise ConfigError(
                f"{where}: column '{column}' must be a number, got {value!r}"
            ) from None
    return value


def load_scene_sheet(path: str | Path, schema_path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and validate the scene sheet (TSV, one row per scene, ``#`` starts a comment).

    Empty cells mean "use the global config". Returns ``{scene: row}`` in sheet order, where a
    row holds only the non-empty cells, typed as the schema says.

    Raises:
        ConfigError: missing file, unknown or missing columns, duplicate scene names, or a value
        of the wrong type (the message names the row and column).
    """
    import csv

    import jsonschema

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"scene sheet {path} not found (config key 'scenes')")
    schema = _load_yaml(schema_path)
    columns = schema["properties"]
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    header = [c.strip() for c in (reader.fieldnames or [])]
    unknown = [c for c in header if c not in columns]
    if unknown:
        raise ConfigError(
            f"scene sheet {path}: unknown column(s) {unknown}; allowed columns: {list(columns)}"
        )
    missing = [c for c in schema.get("required", []) if c not in header]
    if missing:
        raise ConfigError(f"scene sheet {path}: missing required column(s) {missing}")
    dupes = [c for c in set(header) if header.count(c) > 1]
    if dupes:
        raise ConfigError(f"scene sheet {path}: column(s) {dupes} appear more than once")

    validator = jsonschema.Draft202012Validator(schema)
    scenes: dict[str, dict[str, Any]] = {}
    for lineno, raw in enumerate(reader, start=2):
        if None in raw:
            raise ConfigError(f"scene sheet {path}, row {lineno}: more cells than columns")
        where = f"scene sheet {path}, row {lineno}"
        row = {
            k.strip(): _coerce(v.strip(), columns[k.strip()], k.strip(), where)
            for k, v in raw.items()
            if v is not None and v.strip() != ""
        }
        errors = list(validator.iter_errors(row))
        if errors:
            name = row.get("scene", "?")
            raise ConfigError(
                f"{where} (scene '{name}'): "
                + "; ".join(_format_error(e, "column") for e in errors)
            )
        if row["scene"] in scenes:
            raise ConfigError(
                f"scene sheet {path}: scene name '{row['scene']}' appears more than once "
                f"(row {lineno}); scene names must be unique because they name results/<scene>/"
            )
        scenes[row["scene"]] = row
    if not scenes:
        raise ConfigError(f"scene sheet {path} has no scenes")
    return scenes


def synthetic_preset(row: dict[str, Any]) -> str | None:
    """Name of the synthetic preset of a ``synthetic:<name>`` source, else None."""
    src = str(row["source"])
    return src[len(SYNTHETIC_PREFIX) :] if src.startswith(SYNTHETIC_PREFIX) else None


def check_synthetic_presets(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """Every ``synthetic:<name>`` source must name a preset under config key ``synthetic``."""
    presets = config.get("synthetic", {}) or {}
    for name, row in scenes.items():
        preset = synthetic_preset(row)
        if preset is not None and preset not in presets:
            raise ConfigError(
                f"scene '{name}': source '{row['source']}' names no synthetic preset; "
                f"defined presets (config key 'synthetic'): {sorted(presets)}"
            )


def check_train_presets(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """Every ``train_preset`` cell must name a preset under config key ``train_presets``."""
    presets = config.get("train_presets", {}) or {}
    for name, row in scenes.items():
        preset = row.get("train_preset")
        if preset is not None and preset not in presets:
            raise ConfigError(
                f"scene '{name}': train_preset '{preset}' is not defined; presets under config "
                f"key 'train_presets': {sorted(presets)}"
            )


def check_splits(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """Every split of ``render.splits`` and of a ``splits`` cell must be a render split name."""
    from .paths import parse_split

    checks = [("config key render.splits", s) for s in scene_splits(config, {})]
    for name, row in scenes.items():
        if row.get("splits"):
            checks += [(f"scene '{name}', column 'splits'", s) for s in scene_splits(config, row)]
    for where, split in checks:
        try:
            parse_split(split)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def check_mask_classes(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """The COCO classes of every scene's semantic mask backend must be known names."""
    from .priors.maskrcnn import resolve_classes

    for name, row in scenes.items():
        values = scene_stage_config(config, row, "masks")
        if "classes" not in values:
            continue
        try:
            resolve_classes(values["classes"])
        except ConfigError as exc:
            raise ConfigError(f"scene '{name}', masks.classes: {exc}") from None


def scene_splits(config: dict, row: dict[str, Any]) -> list[str]:
    """The render splits of one scene: the sheet's ``splits`` cell, else ``render.splits``."""
    from .config import RenderSplitConfig

    if row.get("splits"):
        return [s.strip() for s in str(row["splits"]).split(",") if s.strip()]
    default = list(RenderSplitConfig.splits)
    return list((config.get("render", {}) or {}).get("splits", default))


def scene_stage_config(config: dict, row: dict[str, Any], stage: str) -> dict[str, Any]:
    """Settings of ``stage`` for one scene: ``config[stage]`` with the row's overrides (for
    ``train``: first the row's ``train_preset``, then nothing else)."""
    values = copy.deepcopy(config.get(stage, {}) or {})
    if stage == "train" and row.get("train_preset"):
        values.update(copy.deepcopy(config["train_presets"][row["train_preset"]]))
    if stage == "frames" and ("width" in row or "height" in row or synthetic_preset(row)):
        # a row that gives one side wants the other to follow its aspect ratio; a synthetic
        # scene is rendered at its preset's size, which is its training size unless overridden
        values["width"] = values["height"] = None
    for column, (target_stage, key) in OVERRIDES.items():
        if target_stage == stage and column in row:
            value = row[column]
            if column == "dynamic_classes":
                value = [c.strip() for c in str(value).split(",") if c.strip()]
            values[key] = value
    return values
