"""Every Snakemake invocation (a no-op rerun, each SLURM job's inner Snakemake) parses the
Snakefile, so its start-up checks must not import torch (about 3 s on 2 cores)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO

CHECKS = """
import sys
from pathlib import Path
import yaml
from nsff_core.workflow import sheet
from nsff_core.priors.backends import needs_gpu

repo = Path(sys.argv[1])
config = yaml.safe_load((repo / "config.yaml").read_text())
config["render"]["splits"] = ["test", "test_spiral", "test_spiral3", "test_fixview2_interp2"]
tsv = Path(sys.argv[2])
tsv.write_text(
    "scene\\tsource\\tmasks\\tdynamic_classes\\tsplits\\n"
    "a\\tsynthetic:tiny\\tmaskrcnn\\tpeople,dog\\ttest,path_x\\n"
    "b\\tsynthetic:tiny\\t\\t\\t\\n"
)
schemas = repo / "rules" / "schemas"
sheet.validate_config(config, schemas / "config.schema.yaml")
scenes = sheet.load_scene_sheet(str(tsv), schemas / "scenes.schema.yaml")
sheet.check_synthetic_presets(config, scenes)
sheet.check_train_presets(config, scenes)
sheet.check_splits(config, scenes)
sheet.check_mask_classes(config, scenes)
for row in scenes.values():
    for stage in ("flow", "masks", "depth"):
        needs_gpu(stage, sheet.scene_stage_config(config, row, stage).get("backend") or "")
heavy = sorted(m for m in ("torch", "torchvision", "cv2", "pycolmap", "timm") if m in sys.modules)
print("heavy:", ",".join(heavy))
"""


def test_start_up_checks_import_no_heavy_module(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", CHECKS, str(REPO), str(tmp_path / "scenes.tsv")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "heavy:", r.stdout
