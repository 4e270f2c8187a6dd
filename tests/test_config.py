"""config.yaml, the schemas and the scene sheet."""

import dataclasses

import pytest
import yaml

from nsff_core import config as C
from nsff_core import sheet
from nsff_core.errors import ConfigError

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
    for stage in ("frames", "flow", "masks", "sfm", "depth", "train", "render", "weights"):
        assert C.to_dict(C.stage_config(stage, cfg[stage])) == C.to_dict(C.STAGES[stage]()), stage
        names = {f.name for f in dataclasses.fields(C.STAGES[stage])}
        assert set(cfg[stage]) == names, f"config.yaml section {stage} lists every setting"
    demo = C.stage_config("synthetic", cfg["synthetic"]["demo"])
    assert (demo.num_frames, demo.width, demo.height) == (24, 320, 180)


def test_schema_covers_every_dataclass_field():
    schema = yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())
    for stage in ("frames", "flow", "masks", "sfm", "depth", "train", "render", "weights"):
        names = {f.name for f in dataclasses.fields(C.STAGES[stage])}
        section = schema["properties"][stage]
        if "$ref" in section:  # train: shared with train_presets
            section = schema["$defs"][section["$ref"].rsplit("/", 1)[-1]]
        assert set(section["properties"]) == names, stage


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["flow"].update(dis_preset="medum"), "flow.dis_preset"),
        (lambda c: c["frames"].update(stride=0), "frames.stride"),
        (lambda c: c["masks"].update(dilate="3"), "masks.dilate"),
        (lambda c: c["sfm"].update(min_registered_fraction=1.5), "sfm.min_registered_fraction"),
        (lambda c: c.update(depht={}), "depht"),
        (lambda c: c["depth"].update(backnd="sparse"), "backnd"),
    ],
)
def test_config_errors_name_the_key(edit, needle):
    cfg = _config()
    edit(cfg)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        sheet.validate_config(cfg, SCHEMAS / "config.schema.yaml")


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
    with pytest.raises(ConfigError, match="row 2.*'stride' must be an integer"):
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
