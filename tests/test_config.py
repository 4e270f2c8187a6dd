"""config.yaml, the schemas and the scene sheet."""

import dataclasses
import re

import pytest
import yaml

from nsff_core import config as C
from nsff_core.errors import ConfigError
from nsff_core.workflow import sheet

from .conftest import REPO

SCHEMAS = REPO / "rules" / "schemas"


def _config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _sheet(tmp_path, text):
    p = tmp_path / "scenes.tsv"
    p.write_text(text)
    return sheet.load_scene_sheet(p, SCHEMAS / "scenes.schema.yaml")


def test_config_yaml_is_valid_and_matches_dataclass_defaults():
    cfg = _config()
    sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
    stages = ("frames", "flow", "masks", "sfm", "depth", "train", "render", "weights", "eval")
    for stage in (*stages, "diagnostics"):
        assert C.to_dict(C.stage_config(stage, cfg[stage])) == C.to_dict(C.STAGES[stage]()), stage
        names = {f.name for f in dataclasses.fields(C.STAGES[stage])}
        assert set(cfg[stage]) == names, f"config.yaml section {stage} lists every setting"
    demo = C.stage_config("synthetic", cfg["synthetic"]["demo"])
    assert (demo.num_frames, demo.width, demo.height) == (24, 320, 180)
    # the workflow's own settings are top-level keys
    top = {f.name for f in dataclasses.fields(C.WorkflowConfig)}
    assert top <= set(cfg), "config.yaml lists every top-level setting"
    assert C.workflow_config(cfg) == C.WorkflowConfig()
    assert C.workflow_config({"scenes": "x.tsv"}) == C.WorkflowConfig()
    assert not C.workflow_config({"keep_intermediates": False}).keep_intermediates


def test_schema_covers_every_dataclass_field():
    schema = yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())
    stages = ("frames", "flow", "masks", "sfm", "depth", "train", "render", "weights", "eval")
    for stage in (*stages, "diagnostics"):
        names = {f.name for f in dataclasses.fields(C.STAGES[stage])}
        section = schema["properties"][stage]
        if "$ref" in section:  # train: shared with train_presets
            section = schema["$defs"][section["$ref"].rsplit("/", 1)[-1]]
        # a moved key stays in the schema, marked deprecated, so that old configs still load
        current = {k for k, v in section["properties"].items() if not v.get("deprecated")}
        moved = {k for k, v in section["properties"].items() if v.get("deprecated")}
        assert current == names, stage
        assert moved == {key for (old, key) in C.MOVED_KEYS if old == stage}, stage
    for f in dataclasses.fields(C.WorkflowConfig):
        assert f.name in schema["properties"], f.name


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["flow"].update(dis_preset="medum"), "flow.dis_preset"),
        (lambda c: c["frames"].update(stride=0), "frames.stride"),
        (lambda c: c["masks"].update(dilate="3"), "masks.dilate"),
        (lambda c: c["sfm"].update(min_registered_fraction=1.5), "sfm.min_registered_fraction"),
        (lambda c: c.update(depht={}), "depht"),
        (lambda c: c["depth"].update(backnd="sparse"), "backnd"),
        (lambda c: c["eval"].update(holdout_every=1), "eval.holdout_every"),
        (lambda c: c["eval"].update(holdout_every=-2), "eval.holdout_every"),
        (lambda c: c["render"].update(splits=["bullet3.x"]), "render.splits"),
        # the split grammar of nsff_core/model/paths.py, not a looser copy: no leading zeros
        (lambda c: c["render"].update(splits=["test", "test_spiral01"]), "render.splits.1"),
        (lambda c: c["render"].update(chunk=0), "render.chunk"),
    ],
)
def test_config_errors_name_the_key(edit, needle):
    cfg = _config()
    edit(cfg)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")


def test_holdout_and_bullet_splits_in_the_sheet(tmp_path):
    scenes = _sheet(
        tmp_path,
        "scene\tsource\tholdout_every\tsplits\tmasks\n"
        "a\tsynthetic:demo\t2\ttest,bullet7.5,test_spiral_time\trigidity\n",
    )
    assert sheet.scene_stage_config(_config(), scenes["a"], "eval")["holdout_every"] == 2
    sheet.check_splits(_config(), scenes)
    with pytest.raises(ConfigError, match="holdout_every"):
        _sheet(tmp_path, "scene\tsource\tholdout_every\na\tsynthetic:demo\t1\n")


def test_stage_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="stirde"):
        C.stage_config("frames", {"stirde": 2})


def test_sheet_reads_types_comments_and_empty_cells(tmp_path):
    scenes = _sheet(
        tmp_path,
        "# comment\nscene\tsource\tstride\twidth\tmasks\n"
        "a\tvideos/a.mp4\t2\t\tnone\nb\tsynthetic:demo\t\t320\t\n",
    )
    assert list(scenes) == ["a", "b"]
    assert scenes["a"] == {"scene": "a", "source": "videos/a.mp4", "stride": 2, "masks": "none"}
    assert scenes["b"]["width"] == 320 and "stride" not in scenes["b"]


def test_sheet_duplicate_scene_names(tmp_path):
    with pytest.raises(ConfigError, match="'a' appears more than once"):
        _sheet(tmp_path, "scene\tsource\na\tx.mp4\na\ty.mp4\n")


def test_sheet_unknown_columns(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown column\(s\) \['fps'\]"):
        _sheet(tmp_path, "scene\tsource\tfps\na\tx.mp4\t30\n")


def test_sheet_bad_values_name_row_and_column(tmp_path):
    with pytest.raises(ConfigError, match="line 2: column 'stride' must be an integer"):
        _sheet(tmp_path, "scene\tsource\tstride\na\tx.mp4\ttwo\n")
    with pytest.raises(ConfigError, match="scene 'a'.*masks"):
        _sheet(tmp_path, "scene\tsource\tmasks\na\tx.mp4\tmaskrnn\n")
    with pytest.raises(ConfigError, match="missing required column"):
        _sheet(tmp_path, "scene\tstride\na\t2\n")
    with pytest.raises(ConfigError, match="not found"):
        sheet.load_scene_sheet(tmp_path / "nope.tsv", SCHEMAS / "scenes.schema.yaml")


def test_scene_overrides():
    cfg = _config()
    row = {"scene": "a", "source": "x", "height": 144, "masks": "none", "stride": 3}
    frames = sheet.scene_stage_config(cfg, row, "frames")
    assert frames["height"] == 144 and frames["width"] is None and frames["stride"] == 3
    assert sheet.scene_stage_config(cfg, row, "masks")["backend"] == "none"
    assert sheet.scene_stage_config(cfg, row, "flow") == cfg["flow"]
    assert cfg["frames"]["width"] == 512, "the global config is not modified"
    # a synthetic scene keeps its rendered size unless the row sets one
    syn = sheet.scene_stage_config(cfg, {"scene": "d", "source": "synthetic:demo"}, "frames")
    assert syn["width"] is None and syn["height"] is None


def test_unknown_synthetic_preset(tmp_path):
    scenes = _sheet(tmp_path, "scene\tsource\na\tsynthetic:huge\n")
    with pytest.raises(ConfigError, match="scene 'a'.*synthetic:huge"):
        sheet.check_synthetic_presets(_config(), scenes)


# --------------------------------------------------------------------------- finite numbers


def _float_keys(node, prefix=()):
    """Key paths of every float in ``node`` (nested dicts and lists)."""
    if isinstance(node, float):
        yield prefix
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _float_keys(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _float_keys(v, (*prefix, i))


def _set(cfg, path, value):
    node = cfg
    for k in path[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
    node[path[-1]] = value


#: every float setting of config.yaml, plus float settings that are null or absent there
FLOAT_KEYS = sorted(
    set(_float_keys(yaml.safe_load((REPO / "config.yaml").read_text())))
    | {
        ("train", "max_time_minutes"),
        ("train_presets", "cpu_demo", "lr"),
        ("train_presets", "tiny", "grid_lr"),
        ("synthetic", "demo", "novel_offsets"),
    },
    key=str,
)


@pytest.mark.parametrize("path", FLOAT_KEYS, ids=".".join)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_every_float_setting_rejects_nan_and_inf(path, bad):
    cfg = _config()
    if path[-1] == "novel_offsets":
        _set(cfg, path, [[0.0, bad, 0.0]])
        path = (*path, 0, 1)
    else:
        _set(cfg, path, bad)
    key = ".".join(map(str, path))
    with pytest.raises(ConfigError, match=rf"key '{re.escape(key)}': must be a finite number"):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")


@pytest.mark.parametrize(
    "path, text, spelling",
    [
        (("train", "lr"), "5e-4", "5.0e-4"),
        (("train_presets", "cpu_demo", "grid_lr"), "4E-2", "4.0e-2"),
        (("train", "lr"), "1e+3", "1.0e+3"),
    ],
)
def test_an_exponent_without_a_point_gets_the_spelling_that_yaml_reads(path, text, spelling):
    cfg = _config()
    value = yaml.safe_load(f"x: {text}")["x"]
    assert isinstance(value, str)  # the PyYAML behaviour the message explains
    _set(cfg, path, value)
    key = re.escape(".".join(path))
    with pytest.raises(
        ConfigError,
        match=rf"key '{key}': '{re.escape(text)}' is text to YAML.*"
        rf"\({re.escape(spelling)}\)",
    ):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
    _set(cfg, path, yaml.safe_load(f"x: {spelling}")["x"])
    sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")  # the suggested spelling passes


def test_a_quoted_number_is_told_to_lose_its_quotes():
    cfg = _config()
    _set(cfg, ("train", "lr"), "0.002")
    with pytest.raises(
        ConfigError,
        match=r"'0.002' is text to YAML, not a number: write it "
        r"without quotes",
    ):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")


def test_text_in_an_integer_key_gets_no_decimal_point_advice():
    cfg = _config()
    _set(cfg, ("train", "max_steps"), "1e3")
    with pytest.raises(ConfigError, match="max_steps") as err:
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
    assert "decimal point" not in str(err.value)


def test_float_keys_cover_the_issue_cases():
    names = {".".join(p) for p in FLOAT_KEYS if all(isinstance(k, str) for k in p)}
    assert {"train.lr", "train.grid_lr", "render.fps", "synthetic.demo.fps"} <= names


# --------------------------------------------------------------------------- size bounds


@pytest.mark.parametrize(
    "path, value",
    [
        (("frames", "width"), 99999999),
        (("frames", "height"), 8193),
        (("frames", "max_frames"), 10**6),
        (("synthetic", "demo", "width"), 99999),
        (("synthetic", "tiny", "num_frames"), 10**6),
        (("train", "num_samples"), 10**6),
        (("train", "batch_size"), 10**7),
        (("render", "chunk"), 2**21),
        (("train", "chunk"), 2**21),  # deprecated, still bounded
        (("train", "width"), 10**5),
        (("train", "depth"), 1000),
        (("train", "grid_channels"), 10**4),
        (("train", "grid_hidden"), 10**5),
        (("train", "grid_base_resolution"), 10**5),
        (("train", "gpus"), 1000),
        (("train_presets", "cpu_demo", "batch_size"), 10**7),
        (("masks", "dilate"), 10**5),
        (("sfm", "max_num_features"), 10**7),
        (("depth", "smooth_sigma"), 1e9),
    ],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else str(v),
)
def test_memory_bounds_have_a_maximum(path, value):
    cfg = _config()
    _set(cfg, path, value)
    key = re.escape(".".join(path))
    with pytest.raises(ConfigError, match=rf"key '{key}': .* is greater than the maximum"):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")


def test_frame_size_minimum():
    cfg = _config()
    for key in ("width", "height"):
        cfg["frames"].update(width=None, height=None)
        cfg["frames"][key] = C.MIN_FRAME_SIDE - 1
        with pytest.raises(ConfigError, match=rf"frames\.{key}': 31 is less than the minimum"):
            sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
        cfg["frames"][key] = C.MIN_FRAME_SIDE
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
    cfg["synthetic"]["tiny"]["height"] = 16
    with pytest.raises(ConfigError, match=r"synthetic\.tiny\.height': 16 is less"):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")


def test_config_schema_frame_bounds_are_the_constants():
    frames = yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())["properties"]["frames"]
    for side in ("width", "height"):
        assert frames["properties"][side]["minimum"] == C.MIN_FRAME_SIDE
        assert frames["properties"][side]["maximum"] == C.MAX_FRAME_SIDE


def test_plane_feature_count_is_bounded():
    cfg = _config()
    default = sheet.grid_features(cfg["train"])
    assert default == 3 * 16 * (32**2 + 64**2 + 128**2 + 256**2 + 32**2 + 64**2)
    # each value is within its own maximum, the product is not: 3 x 64 x (4096^2 + ...)
    cfg["train_presets"]["huge"] = {
        "grid_base_resolution": 512,
        "grid_levels": 4,
        "grid_channels": 64,
    }
    with pytest.raises(ConfigError, match=r"key 'train_presets\.huge': .*features"):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
    # the warp levels of the deforming field count too
    warp = {"grid_dynamic": "deform", "grid_motion_levels": 2, "grid_motion_resolution": 64}
    assert sheet.grid_features({**cfg["train"], **warp}) == default + 3 * 16 * (32**2 + 64**2)
    # and its detail planes (base * 2^l per level; the frame codes are not planes)
    rich = {**warp, "grid_detail_levels": 2, "grid_frame_code": 16}
    assert sheet.grid_features({**cfg["train"], **rich}) == default + 3 * 16 * 2 * (32**2 + 64**2)
    # the image plane is one plane of its resolution
    image = {"grid_image_resolution": 512}
    assert sheet.grid_features({**cfg["train"], **image}) == default + 16 * 512**2
    cfg["train_presets"]["huge"] = {**warp, "grid_motion_resolution": 1024, "grid_channels": 256}
    with pytest.raises(ConfigError, match=r"key 'train_presets\.huge': .*grid_motion_resolution"):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
    # a preset inherits what it does not set from train
    cfg["train_presets"]["huge"] = {"grid_levels": 8}
    cfg["train"]["grid_channels"] = 64
    with pytest.raises(ConfigError, match=r"key 'train_presets\.huge'"):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")


# --------------------------------------------------------------------------- moved settings


def test_render_chunk_is_a_render_setting_not_a_train_one():
    cfg = _config()
    row = {"scene": "a", "source": "synthetic:demo", "train_preset": "cpu_demo"}
    assert "chunk" not in cfg["train"] and cfg["render"]["chunk"] == C.RenderSplitConfig.chunk
    cfg["render"]["chunk"] = 1024
    assert sheet.scene_stage_config(cfg, row, "render")["chunk"] == 1024
    assert "chunk" not in sheet.scene_stage_config(cfg, row, "train")
    assert sheet.moved_key_warnings(cfg) == []


def test_an_old_config_with_train_chunk_still_works_with_a_warning():
    """train.chunk (before it moved): accepted by the schema, used as render.chunk, gone from
    train's settings (so it neither reaches TrainConfig nor retrains), and warned about."""
    cfg = _config()
    del cfg["render"]["chunk"]
    cfg["train"]["chunk"] = 2048
    cfg["train_presets"]["cpu_demo"]["chunk"] = 512
    sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")
    plain = {"scene": "a", "source": "synthetic:demo"}
    preset = {**plain, "train_preset": "cpu_demo"}
    assert sheet.scene_stage_config(cfg, plain, "render")["chunk"] == 2048
    assert sheet.scene_stage_config(cfg, preset, "render")["chunk"] == 512  # the preset's
    for row in (plain, preset):
        train = sheet.scene_stage_config(cfg, row, "train")
        assert "chunk" not in train
        C.stage_config("train", train)
        assert C.stage_config("render", sheet.scene_stage_config(cfg, row, "render")).chunk > 0
    warnings = sheet.moved_key_warnings(cfg)
    assert len(warnings) == 2
    assert "'train.chunk' is deprecated" in warnings[0] and "'render.chunk'" in warnings[0]
    assert "2048 is used as render.chunk" in warnings[0]
    assert "'train_presets.cpu_demo.chunk' is deprecated" in warnings[1]
    # both given: render.chunk wins, and the warning says the old one is ignored
    cfg["render"]["chunk"] = 4096
    assert sheet.scene_stage_config(cfg, preset, "render")["chunk"] == 4096
    assert all("it is ignored" in w for w in sheet.moved_key_warnings(cfg))


def test_a_stored_train_config_with_chunk_still_loads():
    """A checkpoint of before the move stores train settings with chunk: it still loads."""
    stored = {**C.to_dict(C.TrainConfig()), "chunk": 4096}
    assert C.from_dict(C.TrainConfig, stored) == C.TrainConfig()
    with pytest.raises(ConfigError, match="chunkk"):
        C.from_dict(C.TrainConfig, {"chunkk": 1})
