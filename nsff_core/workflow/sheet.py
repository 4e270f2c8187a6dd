"""Workflow configuration: validation of ``config.yaml`` and of the scene sheet, and the
per-scene settings of every stage (global config with the sheet's overrides applied).

The JSON schemas live in ``rules/schemas/``; the workflow passes their paths. Everything here is
plain Python so that tests exercise exactly what the workflow runs at start-up. Numbers must be
finite everywhere (the validator's ``number`` type excludes NaN and the infinities); the sheet is
UTF-8 text, and messages name its rows by their line in the file.
"""

from __future__ import annotations

import codecs
import copy
import io
import math
import re
from pathlib import Path
from typing import Any

from nsff_core.config import MAX_GRID_FEATURES
from nsff_core.errors import ConfigError

from .layout import RENDER_PARTS

#: Longest scene name: it names results/<scene>/ and is part of every output path, which
#: must stay below the file systems' 255-byte name and 4096-byte path limits.
MAX_SCENE_NAME_LENGTH = 100
#: Names the workflow itself writes directly under results/ (rule summary's table, log and
#: benchmark); a scene of that name would collide with them. Compared case-insensitively.
RESERVED_SCENE_NAMES = ("summary.csv", "logs", "benchmarks", "report")

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
    "holdout_every": ("eval", "holdout_every"),
}

SYNTHETIC_PREFIX = "synthetic:"


def _load_yaml(path: str | Path) -> Any:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def _is_finite_number(checker, instance: Any) -> bool:
    """JSON-schema type ``number`` without NaN and the infinities (YAML ``.nan``, ``.inf``)."""
    import jsonschema

    base = jsonschema.Draft202012Validator.TYPE_CHECKER
    return base.is_type(instance, "number") and not (
        isinstance(instance, float) and not math.isfinite(instance)
    )


def _validator(schema: dict):
    """A draft 2020-12 validator of ``schema`` whose ``number`` excludes non-finite floats:
    bounds such as ``exclusiveMinimum: 0`` hold for NaN (every comparison with it is false), so
    the type itself must reject it, for every number setting at once."""
    import jsonschema

    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _is_finite_number)
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)
    return cls(schema)


def _format_error(err, kind: str = "key") -> str:
    loc = ".".join(str(p) for p in err.absolute_path)
    message = err.message
    inst = err.instance
    if err.validator == "type" and isinstance(inst, float) and not math.isfinite(inst):
        message = f"must be a finite number, got {inst}"
    elif err.validator == "type" and "number" in _types(err) and number_in_text(inst) is not None:
        # YAML 1.1 (PyYAML) reads an exponent without a decimal point as text
        spelled = _with_point(inst)
        fix = "without quotes" if spelled == inst.strip() else f"with a decimal point ({spelled})"
        message = f"{inst!r} is text to YAML, not a number: write it {fix}"
    elif err.validator == "maxLength" and isinstance(inst, str):
        message = f"is {len(inst)} characters long, at most {err.validator_value} are allowed"
    return f"{kind} '{loc}': {message}" if loc else message


def _types(err) -> list:
    value = err.validator_value
    return list(value) if isinstance(value, list) else [value]


def number_in_text(text: Any) -> float | None:
    """The finite number that ``text`` spells (``"5e-4"``, which YAML 1.1 reads as text), or
    None when ``text`` is not a string or spells no finite number."""
    if not isinstance(text, str):
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _with_point(text: str) -> str:
    """``5e-4`` -> ``5.0e-4``: the spelling YAML 1.1 reads as a float."""
    mantissa, e, exponent = text.strip().lower().partition("e")
    if e and "." not in mantissa:
        return f"{mantissa}.0e{exponent}"
    return text.strip()


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Check ``config`` against the config schema; raise :class:`ConfigError` naming the key.

    Besides the schema (which also rejects NaN and infinite numbers anywhere, train presets
    included), the plane sizes of ``train`` and of every train preset (merged over ``train``,
    as a scene sees them) must stay within :data:`MAX_GRID_FEATURES`.
    """
    schema = _with_split_pattern(_load_yaml(schema_path))
    validator = _validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration: " + "; ".join(_format_error(e) for e in errors))
    _check_grid_size(config)


def _with_split_pattern(schema: dict) -> dict:
    """``schema`` with the split grammar of :mod:`nsff_core.model.paths` as the pattern of every
    ``render.splits`` item (the schema file does not repeat the grammar)."""
    from nsff_core.model.paths import SPLIT_PATTERN

    render = schema.get("properties", {}).get("render", {}).get("properties", {})
    if "splits" in render:
        render["splits"]["items"]["pattern"] = f"^(?:{SPLIT_PATTERN})$"
    return schema


def moved_key_warnings(config: dict) -> list[str]:
    """A deprecation message for every setting of ``config`` that moved to another section
    (:data:`nsff_core.config.MOVED_KEYS`), in ``train`` or a train preset; such a setting is
    still used in its new place (:func:`scene_stage_config`) unless that place is set too."""
    from nsff_core.config import MOVED_KEYS

    messages = []
    for (section, key), (new_section, new_key) in MOVED_KEYS.items():
        places = [(section, config.get(section) or {})]
        if section == "train":
            presets = config.get("train_presets") or {}
            places += [(f"train_presets.{name}", p or {}) for name, p in presets.items()]
        new_set = new_key in (config.get(new_section) or {})
        for place, values in places:
            if key not in values:
                continue
            use = (
                f"it is ignored, since {new_section}.{new_key} is set"
                if new_set
                else f"its value {values[key]!r} is used as {new_section}.{new_key} for now"
            )
            messages.append(
                f"config key '{place}.{key}' is deprecated: the setting moved to "
                f"'{new_section}.{new_key}' (changing it there does not rerun {section}); {use}. "
                f"Move it to '{new_section}.{new_key}' in your config."
            )
    return messages


def grid_features(values: dict[str, Any]) -> int:
    """Learned features of the planes field with train settings ``values`` (missing keys take
    the defaults): 3 spatial planes of (base x 2^l)^2 cells per level l, in the static and in the
    dynamic field, times the channels, and for ``grid_dynamic: deform`` those of its warp
    and detail levels. The time planes (resolution x frames) and the per-frame texture
    (``grid_frame_texture``) are not counted: the frame count is not known before the frames
    rule ran (the texture is checked when training builds its field)."""
    from nsff_core.config import TrainConfig

    def get(key: str) -> Any:
        return values.get(key, getattr(TrainConfig, key))

    base, channels = int(get("grid_base_resolution")), int(get("grid_channels"))
    cells = sum(
        (base * 2**level) ** 2
        for levels in (int(get("grid_levels")), int(get("grid_dynamic_levels")))
        for level in range(levels)
    )
    if get("grid_dynamic") == "deform":
        finest = int(get("grid_motion_resolution") or base)
        cells += sum(max(finest // 2**k, 2) ** 2 for k in range(int(get("grid_motion_levels"))))
        cells += sum((base * 2**level) ** 2 for level in range(int(get("grid_detail_levels"))))
    # one plane, not three
    image = int(get("grid_image_resolution")) ** 2
    return 3 * channels * cells + channels * image


def _check_grid_size(config: dict) -> None:
    base = config.get("train", {}) or {}
    sections = [("train", base)] + [
        (f"train_presets.{name}", {**base, **(preset or {})})
        for name, preset in (config.get("train_presets", {}) or {}).items()
    ]
    for where, values in sections:
        features = grid_features(values)
        if features > MAX_GRID_FEATURES:
            raise ConfigError(
                f"invalid configuration: key '{where}': the planes field would learn "
                f"{features:,} features (grid_base_resolution, grid_levels, "
                f"grid_dynamic_levels, grid_channels, grid_motion_resolution, grid_detail_levels, "
                f"grid_image_resolution), more than the {MAX_GRID_FEATURES:,} "
                f"allowed ({MAX_GRID_FEATURES * 4 // 2**30} GiB of float32 before gradients "
                "and optimiser state); lower grid_levels or grid_base_resolution"
            )


def _coerce(value: str, spec: dict, column: str, where: str) -> Any:
    kind = spec.get("type")
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise ConfigError(f"{where}: column '{column}' must be an integer, got {value!r}")
        return int(value)
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):  # float() also reads "nan" and "inf"
            raise ConfigError(f"{where}: column '{column}' must be a finite number, got {value!r}")
        return number
    return value


class SceneSheet(dict):
    """The scenes of a sheet, ``{scene: row}`` in sheet order (a plain dict for every reader),
    plus where each row came from, so that later checks can name it.

    Attributes:
        path: the sheet file as configured.
        lines: ``{scene: line number}``, 1-based line numbers of the file (comment and blank
            lines counted), as an editor shows them.
    """

    def __init__(self, path: str | Path = "", rows=(), lines: dict[str, int] | None = None):
        super().__init__(rows)
        self.path = str(path)
        self.lines = dict(lines or {})


def sheet_place(scenes: dict[str, dict[str, Any]], name: str) -> str:
    """How messages name a scene: its sheet file and line when known, and the scene."""
    lines = getattr(scenes, "lines", {})
    if name in lines:
        return f"scene sheet {scenes.path} line {lines[name]} (scene '{name}')"
    return f"scene '{name}'"


def _read_sheet_text(path: Path) -> str:
    """The sheet's text, decoded as UTF-8 (a leading byte-order mark, as spreadsheet programs
    write, is dropped). Raises :class:`ConfigError` for any other encoding."""
    data = path.read_bytes()
    fix = (
        "save the sheet as UTF-8 text (in a spreadsheet: 'Save as' tab-separated text with "
        "character set UTF-8; or: iconv -f <encoding> -t UTF-8)"
    )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        # UTF-16 (and UTF-32) text of ASCII characters is valid UTF-8 byte by byte, with NUL
        # bytes in between: its byte-order mark or the NULs give it away
        raise ConfigError(f"scene sheet {path} is UTF-16 (or binary), not UTF-8 text; {fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"scene sheet {path} line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 (the "
            f"sheet was probably saved as Latin-1 or Windows-1252); {fix}"
        ) from None


def check_scene_name(name: str, taken: dict[str, int], where: str) -> None:
    """Refuse a scene name that a file or folder of the workflow owns, or that differs from an
    earlier scene's only in case (``taken``: lower-cased names -> their line).

    Names are compared case-insensitively: on macOS and Windows file systems ``Logs`` and
    ``logs`` are one folder, so two such scenes would write into each other's results."""
    if name.lower() in RESERVED_SCENE_NAMES:
        raise ConfigError(
            f"{where}: the scene name '{name}' is reserved: the workflow writes "
            f"results/{name.lower()} itself (reserved names: {', '.join(RESERVED_SCENE_NAMES)}, "
            "in any case); rename the scene"
        )
    other = taken.get(name.lower())
    if other is not None:
        raise ConfigError(
            f"{where}: the scene name '{name}' differs only in case from the scene on line "
            f"{other}; on case-insensitive file systems (macOS, Windows) both would write "
            f"results/{name}/; rename one of them"
        )


def load_scene_sheet(path: str | Path, schema_path: str | Path) -> SceneSheet:
    """Read and validate the scene sheet (TSV, one row per scene, ``#`` starts a comment).

    The file must be UTF-8 (with or without a byte-order mark). Empty cells mean "use the
    global config". Returns ``{scene: row}`` in sheet order (a :class:`SceneSheet`, which also
    records each row's line), where a row holds only the non-empty cells, typed as the schema
    says. Messages give line numbers of the file, comment and blank lines counted.

    Raises:
        ConfigError: missing file, another encoding than UTF-8, unknown or missing columns,
        duplicate, reserved or over-long scene names, or a value of the wrong type or out of
        range (the message names the line and column).
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"scene sheet {path} not found (config key 'scenes')")
    schema = _load_yaml(schema_path)
    columns = schema["properties"]
    text = _read_sheet_text(path)
    # (line number, line) of the lines that hold data; newline="" keeps line ends for csv
    kept = [
        (lineno, ln)
        for lineno, ln in enumerate(io.StringIO(text, newline=""), start=1)
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    reader = csv.DictReader([ln for _, ln in kept], delimiter="\t")
    header = [c.strip() for c in (reader.fieldnames or [])]
    at_header = f"scene sheet {path} line {kept[0][0]}" if kept else f"scene sheet {path}"
    unknown = [c for c in header if c not in columns]
    if unknown:
        raise ConfigError(
            f"{at_header}: unknown column(s) {unknown}; allowed columns: {list(columns)}"
        )
    missing = [c for c in schema.get("required", []) if c not in header]
    if missing:
        raise ConfigError(f"{at_header}: missing required column(s) {missing}")
    dupes = [c for c in set(header) if header.count(c) > 1]
    if dupes:
        raise ConfigError(f"{at_header}: column(s) {dupes} appear more than once")

    validator = _validator(schema)
    scenes = SceneSheet(path)
    lowered: dict[str, int] = {}
    consumed = reader.line_num  # data lines read so far (the header)
    for raw in reader:
        # a row starts on the data line after those read before it (a quoted cell may span lines)
        lineno, consumed = kept[consumed][0], reader.line_num
        where = f"scene sheet {path} line {lineno}"
        if None in raw:
            raise ConfigError(f"{where}: more cells than columns")
        row = {
            k.strip(): _coerce(v.strip(), columns[k.strip()], k.strip(), where)
            for k, v in raw.items()
            if v is not None and v.strip() != ""
        }
        errors = list(validator.iter_errors(row))
        if errors:
            name = row.get("scene", "?")
            if isinstance(name, str) and len(name) > MAX_SCENE_NAME_LENGTH:
                name = name[:20] + "..."
            raise ConfigError(
                f"{where} (scene '{name}'): "
                + "; ".join(_format_error(e, "column") for e in errors)
            )
        name = row["scene"]
        if name in scenes:
            raise ConfigError(
                f"{where}: scene name '{name}' appears more than once (first on line "
                f"{scenes.lines[name]}); scene names must be unique because they name "
                "results/<scene>/"
            )
        check_scene_name(name, lowered, f"{where} (scene '{name}')")
        scenes[name] = row
        scenes.lines[name] = lowered[name.lower()] = lineno
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
                f"{sheet_place(scenes, name)}: source '{row['source']}' names no synthetic preset; "
                f"defined presets (config key 'synthetic'): {sorted(presets)}"
            )


def check_train_presets(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """Every ``train_preset`` cell must name a preset under config key ``train_presets``."""
    presets = config.get("train_presets", {}) or {}
    for name, row in scenes.items():
        preset = row.get("train_preset")
        if preset is not None and preset not in presets:
            raise ConfigError(
                f"{sheet_place(scenes, name)}: train_preset '{preset}' is not defined; presets "
                f"under config key 'train_presets': {sorted(presets)}"
            )


def check_frame_ranges(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """Every scene's frame range ``[start, end)`` must be non-empty, whichever of the sheet
    (columns start, end) and the config (frames.start, frames.end) each bound comes from. For a
    synthetic scene, whose frame count is known before any job runs, the range must also keep
    at least 2 of its frames."""
    from nsff_core.config import FramesConfig, SyntheticConfig

    def origin(row: dict[str, Any], key: str) -> str:
        return f"column '{key}'" if key in row else f"config key frames.{key}"

    synthetic = config.get("synthetic", {}) or {}
    for name, row in scenes.items():
        values = scene_stage_config(config, row, "frames")
        start = values.get("start", FramesConfig.start)
        end = values.get("end", FramesConfig.end)
        stride = values.get("stride", FramesConfig.stride)
        if end is not None and end <= start:
            raise ConfigError(
                f"{sheet_place(scenes, name)}: the frame range is empty: end {end} "
                f"({origin(row, 'end')}) must be greater than start {start} "
                f"({origin(row, 'start')}); the range is [start, end), end exclusive"
            )
        preset = synthetic.get(synthetic_preset(row) or "")
        if preset is not None:
            total = preset.get("num_frames", SyntheticConfig.num_frames)
            kept = len(range(start, total if end is None else min(end, total), stride))
            if kept < 2:
                raise ConfigError(
                    f"{sheet_place(scenes, name)}: the frame range start={start} end={end} "
                    f"stride={stride} keeps {kept} of the {total} frames of "
                    f"'{row['source']}'; NSFF needs at least 2"
                )


def check_splits(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """Every split of ``render.splits`` and of a ``splits`` cell must be a render split name."""
    from nsff_core.model.paths import parse_split

    checks = [("config key render.splits", s) for s in scene_splits(config, {})]
    for name, row in scenes.items():
        if row.get("splits"):
            checks += [
                (f"{sheet_place(scenes, name)}, column 'splits'", s)
                for s in scene_splits(config, row)
            ]
    for place, split in checks:
        try:
            parse_split(split)
        except ValueError as exc:
            raise ConfigError(f"{place}: {exc}") from None
    for name, row in scenes.items():
        splits = set(scene_splits(config, row))
        for split in sorted(splits):
            for side in RENDER_PARTS:  # the side videos s_depth, s_static, ...
                if f"{split}_{side}" in splits:
                    raise ConfigError(
                        f"{sheet_place(scenes, name)}: the render splits {split} and"
                        f" {split}_{side} would write the same file ({split}_{side} is also the"
                        f" name of the {side} video of split {split}); rename that camera path"
                    )


def check_mask_classes(config: dict, scenes: dict[str, dict[str, Any]]) -> None:
    """The COCO classes of every scene's semantic mask backend must be known names."""
    from nsff_core.priors.nets.maskrcnn import resolve_classes

    for name, row in scenes.items():
        values = scene_stage_config(config, row, "masks")
        if "classes" not in values:
            continue
        try:
            resolve_classes(values["classes"])
        except ConfigError as exc:
            raise ConfigError(f"{sheet_place(scenes, name)}, masks.classes: {exc}") from None


def scene_splits(config: dict, row: dict[str, Any]) -> list[str]:
    """The render splits of one scene: the sheet's ``splits`` cell, else ``render.splits``."""
    from nsff_core.config import RenderSplitConfig

    if row.get("splits"):
        return [s.strip() for s in str(row["splits"]).split(",") if s.strip()]
    default = list(RenderSplitConfig.splits)
    return list((config.get("render", {}) or {}).get("splits", default))


def _section(config: dict, row: dict[str, Any], stage: str) -> dict[str, Any]:
    """A copy of ``config[stage]``; for ``train`` with the row's ``train_preset`` applied."""
    values = copy.deepcopy(config.get(stage, {}) or {})
    if stage == "train" and row.get("train_preset"):
        values.update(copy.deepcopy(config["train_presets"][row["train_preset"]]))
    return values


def scene_stage_config(config: dict, row: dict[str, Any], stage: str) -> dict[str, Any]:
    """Settings of ``stage`` for one scene: ``config[stage]`` with the row's overrides (for
    ``train``: first the row's ``train_preset``, then nothing else). A setting that moved to
    another section (:data:`nsff_core.config.MOVED_KEYS`) leaves its old section and, given
    there only, is used in its new one (see :func:`moved_key_warnings`)."""
    from nsff_core.config import MOVED_KEYS

    values = _section(config, row, stage)
    for (old_stage, key), (new_stage, new_key) in MOVED_KEYS.items():
        if stage == old_stage:
            values.pop(key, None)
        elif stage == new_stage and new_key not in values:
            old = _section(config, row, old_stage)
            if key in old:
                values[new_key] = old[key]
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
