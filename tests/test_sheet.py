"""The scene sheet at start-up: encodings, line numbers, scene names, frame ranges, sizes; and
the same checks through a real Snakemake start, which must stop before any job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nsff_core import config as C
from nsff_core.errors import ConfigError
from nsff_core.model.synthetic import SUITE_PRESETS
from nsff_core.workflow import sheet

from .conftest import REPO

SCHEMAS = REPO / "rules" / "schemas"
HEADER = "scene\tsource\tstart\tend\twidth\n"


def _config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _write(tmp_path: Path, data: str | bytes) -> Path:
    p = tmp_path / "scenes.tsv"
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _load(tmp_path: Path, data: str | bytes) -> sheet.SceneSheet:
    return sheet.load_scene_sheet(_write(tmp_path, data), SCHEMAS / "scenes.schema.yaml")


def _start_up(tmp_path: Path, data: str | bytes, config: dict | None = None) -> dict:
    """Every start-up check common.smk runs, in its order."""
    config = _config() if config is None else config
    sheet.validate_config(config, SCHEMAS / "config.schema.yaml")
    scenes = _load(tmp_path, data)
    for check in (
        sheet.check_synthetic_presets,
        sheet.check_train_presets,
        sheet.check_frame_ranges,
        sheet.check_splits,
        sheet.check_mask_classes,
    ):
        check(config, scenes)
    return scenes


# --------------------------------------------------------------------------- encodings


GOOD = "# my scenes\nscene\tsource\tstride\nkid\tvideos/kid.mp4\t2\ndemo\tsynthetic:demo\t\n"


def test_utf8_with_and_without_bom_and_crlf_read_the_same(tmp_path):
    plain = dict(_load(tmp_path, GOOD))
    assert plain == {
        "kid": {"scene": "kid", "source": "videos/kid.mp4", "stride": 2},
        "demo": {"scene": "demo", "source": "synthetic:demo"},
    }
    assert dict(_load(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())) == plain  # Excel's UTF-8
    assert dict(_load(tmp_path, GOOD.replace("\n", "\r\n"))) == plain
    # a non-ASCII source path in UTF-8 is kept as written
    scenes = _load(tmp_path, "scene\tsource\nkid\tvidéos/kid.mp4\n")
    assert scenes["kid"]["source"] == "vidéos/kid.mp4"


def test_latin1_sheet_names_the_file_the_line_and_the_fix(tmp_path):
    data = "# comment\nscene\tsource\nkid\tvidéos/kid.mp4\n".encode("latin-1")
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, data)
    msg = str(exc.value)
    assert "scenes.tsv line 3" in msg and "0xe9 is not UTF-8" in msg
    assert "save the sheet as UTF-8" in msg


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_sheet_is_refused_with_the_file_named(tmp_path, encoding):
    with pytest.raises(ConfigError, match=r"scenes\.tsv is UTF-16.*save the sheet as UTF-8"):
        _load(tmp_path, GOOD.encode(encoding))


# --------------------------------------------------------------------------- line numbers


def test_messages_give_line_numbers_of_the_file(tmp_path):
    text = (
        "# scenes of the lab\n"  # 1
        "\n"  # 2
        "scene\tsource\tstride\n"  # 3
        "# the first take\n"  # 4
        "a\tx.mp4\t1\n"  # 5
        "\n"  # 6
        "b\tx.mp4\ttwo\n"  # 7
    )
    with pytest.raises(ConfigError, match=r"scenes\.tsv line 7: column 'stride'"):
        _load(tmp_path, text)
    good = _load(tmp_path, text.replace("two", "2"))
    assert good.lines == {"a": 5, "b": 7}
    with pytest.raises(ConfigError, match=r"line 7: scene name 'a' .*first on line 5"):
        _load(tmp_path, text.replace("b\tx.mp4\ttwo", "a\tx.mp4\t2"))
    with pytest.raises(ConfigError, match=r"scenes\.tsv line 3: unknown column"):
        _load(tmp_path, text.replace("stride", "strode"))
    # the checks after loading name the line as well
    with pytest.raises(ConfigError, match=r"line 7 \(scene 'b'\): train_preset 'nope'"):
        _start_up(
            tmp_path,
            text.replace("stride", "train_preset")
            .replace("\t1\n", "\ttiny\n")
            .replace("two", "nope"),
        )


# --------------------------------------------------------------------------- scene names


def test_scene_name_length(tmp_path):
    ok = "s" * sheet.MAX_SCENE_NAME_LENGTH
    assert list(_load(tmp_path, f"scene\tsource\n{ok}\tx.mp4\n")) == [ok]
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, f"scene\tsource\n{'s' * 300}\tx.mp4\n")
    msg = str(exc.value)
    assert "line 2" in msg and "column 'scene': is 300 characters long, at most 100" in msg
    assert "s" * 300 not in msg, "the message stays readable"


@pytest.mark.parametrize("name", ["summary.csv", "logs", "benchmarks", "Logs", "SUMMARY.CSV"])
def test_reserved_scene_names(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"line 3 \(scene '{re.escape(name)}'\).*reserved"):
        _load(tmp_path, f"scene\tsource\nok\tx.mp4\n{name}\tx.mp4\n")


def test_reserved_names_cover_everything_the_rules_write_under_results():
    """A name a rule writes directly under results/ (not under results/{scene}/) is reserved."""
    texts = [p.read_text() for p in [*(REPO / "rules").glob("*.smk"), REPO / "Snakefile"]]
    written = {m for t in texts for m in re.findall(r"results/([A-Za-z0-9][^/{\"'\s,)]*)", t)}
    assert written, "the pattern finds the summary's paths"
    assert written <= set(sheet.RESERVED_SCENE_NAMES), written


def test_scene_names_that_differ_only_in_case(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3 .*'Demo' differs only in case .* line 2"):
        _load(tmp_path, "scene\tsource\ndemo\tx.mp4\nDemo\ty.mp4\n")


# --------------------------------------------------------------------------- frame ranges


def _with_frames(**frames) -> dict:
    cfg = _config()
    cfg["frames"].update(frames)
    return cfg


@pytest.mark.parametrize(
    "cells, frames, needle",
    [
        ("10\t5", {}, "end 5 (column 'end') must be greater than start 10 (column 'start')"),
        ("7\t", {"end": 7}, "end 7 (config key frames.end) must be greater than start 7 (col"),
        ("\t3", {"start": 4}, "end 3 (column 'end') must be greater than start 4 (config key"),
        ("\t", {"start": 9, "end": 2}, "end 2 (config key frames.end) must be greater than"),
    ],
)
def test_empty_frame_range_is_refused_with_the_row_named(tmp_path, cells, frames, needle):
    data = HEADER + f"ok\tx.mp4\t0\t5\t\n# a comment\nbad\tx.mp4\t{cells}\t\n"
    with pytest.raises(ConfigError, match=r"scenes\.tsv line 4 \(scene 'bad'\)") as exc:
        _start_up(tmp_path, data, _with_frames(**frames))
    assert needle in str(exc.value)


def test_good_frame_ranges_pass(tmp_path):
    data = HEADER + "a\tx.mp4\t2\t3\t\nb\tx.mp4\t\t\t\n"
    _start_up(tmp_path, data, _with_frames(start=0, end=None))


def test_synthetic_range_must_keep_two_frames(tmp_path):
    # synthetic:demo renders 24 frames: start 23 keeps one
    with pytest.raises(ConfigError, match=r"line 2 .*keeps 1 of the 24 frames"):
        _start_up(tmp_path, "scene\tsource\tstart\nd\tsynthetic:demo\t23\n")
    _start_up(tmp_path, "scene\tsource\tstart\nd\tsynthetic:demo\t22\n")


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "width, needle",
    [
        (99999999, "99999999 is greater than the maximum of 8192"),
        (31, "31 is less than the minimum of 32"),
    ],
)
def test_sheet_width_bounds(tmp_path, width, needle):
    with pytest.raises(ConfigError, match=r"line 2 \(scene 'a'\): column 'width'") as exc:
        _load(tmp_path, f"scene\tsource\twidth\na\tx.mp4\t{width}\n")
    assert needle in str(exc.value)
    for ok in (C.MIN_FRAME_SIDE, C.MAX_FRAME_SIDE):
        _load(tmp_path, f"scene\tsource\theight\na\tx.mp4\t{ok}\n")


def test_sheet_schema_bounds_are_the_constants():
    columns = yaml.safe_load((SCHEMAS / "scenes.schema.yaml").read_text())["properties"]
    for side in ("width", "height"):
        assert columns[side]["minimum"] == C.MIN_FRAME_SIDE
        assert columns[side]["maximum"] == C.MAX_FRAME_SIDE
    assert columns["scene"]["maxLength"] == sheet.MAX_SCENE_NAME_LENGTH


def test_number_cells_must_be_finite():
    spec = {"type": "number"}
    assert sheet._coerce("2.5", spec, "c", "here") == 2.5
    for bad in ("nan", "inf", "-Infinity", "x"):
        with pytest.raises(ConfigError, match="here: column 'c' must be a finite number"):
            sheet._coerce(bad, spec, "c", "here")


# --------------------------------------------------------------------------- Snakemake start


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The repository's Snakefile run with ``workdir`` as working directory."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
        + list(args),
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _workdir(tmp_path: Path, data: str | bytes, config: dict | None = None) -> Path:
    cfg = _config() if config is None else config
    cfg["scenes"] = "scenes.tsv"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    _write(tmp_path, data)
    return tmp_path


def _nan_lr() -> dict:
    cfg = _config()
    cfg["train_presets"]["cpu_demo"]["lr"] = float("nan")
    return cfg


GOOD_ROW = "ok\tsynthetic:tiny\t\t\t\n"


@pytest.mark.workflow
@pytest.mark.parametrize(
    "data, config, needle",
    [
        (HEADER + GOOD_ROW + "#\nbad\tsynthetic:tiny\t9\t3\t\n", None, "line 4 (scene 'bad')"),
        (HEADER + GOOD_ROW + "logs\tsynthetic:tiny\t\t\t\n", None, "line 3 (scene 'logs')"),
        (HEADER + "summary.csv\tx.mp4\t\t\t\n", None, "'summary.csv' is reserved"),
        (HEADER + "s" * 300 + "\tx.mp4\t\t\t\n", None, "is 300 characters long"),
        (HEADER + "é\tx.mp4\t\t\t\n", None, "line 2: byte 0xe9 is not UTF-8"),
        (HEADER + "a\tx.mp4\t\t\t99999999\n", None, "greater than the maximum of 8192"),
        (HEADER + GOOD_ROW, _nan_lr(), "train_presets.cpu_demo.lr': must be a finite number"),
    ],
    ids=["end<start", "logs", "summary.csv", "300-chars", "latin-1", "width", "nan-lr"],
)
def test_bad_sheet_or_config_stops_snakemake_before_any_job(tmp_path, data, config, needle):
    if isinstance(data, str) and "é" in data:
        data = data.encode("latin-1")
    # a dry run: on a workflow without the check it plans (and returns 0) instead of running
    # the whole DAG, so the test fails fast there too
    wd = _workdir(tmp_path, data, config)
    r = snakemake(wd, "-n", "--cores", "1")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert needle in out, out[-2000:]
    assert "Job stats" not in out, "stopped while parsing, before planning any job"


@pytest.mark.workflow
def test_dry_run_accepts_a_bom_sheet_with_comments(tmp_path):
    data = b"\xef\xbb\xbf# lab scenes\n" + (HEADER + GOOD_ROW).encode()
    r = snakemake(_workdir(tmp_path, data), "-n", "--cores", "1")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert "Job stats" in r.stdout and "synthetic" in r.stdout and "frames" in r.stdout


def test_a_split_named_like_the_side_video_of_another_is_refused(tmp_path):
    data = "scene\tsource\tsplits\nkid\tvideos/kid.mp4\ttest,path_a,path_a_depth\n"
    with pytest.raises(ConfigError, match=r"line 2 \(scene 'kid'\): the render splits path_a"):
        _start_up(tmp_path, data)
    _start_up(tmp_path, data.replace("path_a_depth", "path_a_deep"))


@pytest.mark.parametrize("name", ["suite.tsv", "real_clips.tsv"])
def test_the_benchmark_sheets_pass_the_start_up_checks(tmp_path, name):
    """benchmarks/README's commands run on these sheets; a schema change must keep them valid."""
    scenes = _start_up(tmp_path, (REPO / "benchmarks" / name).read_text())
    assert len(scenes) >= 2


def test_the_suite_sheet_holds_every_variant_at_the_benchmark_preset(tmp_path):
    scenes = _start_up(tmp_path, (REPO / "benchmarks" / "suite.tsv").read_text())
    assert set(scenes) == {"demo", *SUITE_PRESETS}
    assert {row["train_preset"] for row in scenes.values()} == {"cpu_demo"}
