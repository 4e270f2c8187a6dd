# Start-up checks and input functions shared by all rules.

import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, workflow.basedir)

from nsff_core import sheet as _sheet
from nsff_core.errors import ConfigError


def _load_scenes():
    schemas = Path(workflow.basedir) / "rules" / "schemas"
    try:
        _sheet.validate_config(config, schemas / "config.schema.yaml")
        scenes = _sheet.load_scene_sheet(config["scenes"], schemas / "scenes.schema.yaml")
        _sheet.check_synthetic_presets(config, scenes)
        _sheet.check_train_presets(config, scenes)
        _sheet.check_frame_ranges(config, scenes)
        _sheet.check_splits(config, scenes)
        _sheet.check_mask_classes(config, scenes)
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    return scenes


SCENES = _load_scenes()

#: config keep_intermediates (default true); false marks the large intermediates temp()
KEEP_INTERMEDIATES = config.get("keep_intermediates", True)


wildcard_constraints:
    scene="|".join(map(re.escape, SCENES)) if SCENES else "[^/]+",


def scene_dir(scene):
    return f"results/{scene}"


def stage_cfg(stage):
    """Params function: the stage's settings for a scene (global config + sheet overrides)."""
    return lambda wc: _sheet.scene_stage_config(config, SCENES[wc.scene], stage)


def weights_config():
    """The typed ``weights`` section (cache folder, trust on first use)."""
    from nsff_core.config import stage_config

    return stage_config("weights", config.get("weights"))


def train_gpus(wc):
    """The scene's train.gpus (its train_preset applied): the job's GPUs, one DDP process each."""
    return int(stage_cfg("train")(wc).get("gpus", 1))


def pretrained(wc, stage):
    """Whether the scene's backend of a prior stage needs a checkpoint (and wants a GPU)."""
    from nsff_core.priors.pretrained import is_pretrained

    backend = _sheet.scene_stage_config(config, SCENES[wc.scene], stage).get("backend")
    return is_pretrained(stage, backend or "")


def pretrained_gpu(stage):
    """Resources function: one GPU for a pretrained backend, none otherwise."""
    return lambda wc: 1 if pretrained(wc, stage) else 0


def synthetic_cfg(wc):
    return config["synthetic"][_sheet.synthetic_preset(SCENES[wc.scene])]


def source_path(wc):
    """The scene's source as given in the sheet, or the video of its synthetic scene."""
    row = SCENES[wc.scene]
    if _sheet.synthetic_preset(row) is not None:
        return f"results/{wc.scene}/source/video.mp4"
    return row["source"]


def source_input(wc):
    """The source as a rule input when it exists; a missing one is reported by the rule."""
    path = source_path(wc)
    if _sheet.synthetic_preset(SCENES[wc.scene]) is not None or Path(path).exists():
        return path
    return []


def intermediate(path):
    """An output that only the priors and train read, never render or evaluate (flow, disp,
    the COLMAP workspace): temp() when config keep_intermediates is false, so Snakemake
    deletes it once train has used it."""
    return path if KEEP_INTERMEDIATES else temp(path)


def scene_holdout_every(scene):
    """The scene's eval.holdout_every (sheet column holdout_every): 0 = no held-out frames."""
    values = _sheet.scene_stage_config(config, SCENES[scene], "eval")
    return int(values.get("holdout_every") or 0)


def holdout_every(wc):
    """Params function: :func:`scene_holdout_every` of the job's scene."""
    return scene_holdout_every(wc.scene)


def holdout_flow(wc):
    """The flow between training frames, for a scene with held-out frames; else none."""
    return f"results/{wc.scene}/flow_holdout" if holdout_every(wc) else []


def intermediate_outputs(scene):
    """The outputs that :func:`intermediate` marks, of one scene."""
    d = scene_dir(scene)
    names = ["flow_fw", "flow_bw", "flow_ok", "sfm", "disp"]
    if scene_holdout_every(scene):
        names.append("flow_holdout")
    return [f"{d}/{name}" for name in names]


def preprocess_targets(scene):
    """The priors of a scene (rule priors). Without keep_intermediates every intermediate is
    listed: what a target rule asks for is never deleted, so `snakemake priors` keeps them."""
    d = scene_dir(scene)
    targets = [
        f"{d}/frames.json",
        f"{d}/flow_fw",
        f"{d}/masks",
        f"{d}/cameras.npz",
        f"{d}/disp",
        f"{d}/diagnostics/diagnostics.json",
    ]
    if not KEEP_INTERMEDIATES:
        targets += [t for t in intermediate_outputs(scene) if t not in targets]
    return targets


def video_format():
    return (config.get("render", {}) or {}).get("video_format", "mp4")


def render_targets(scene):
    """The videos of the scene's render splits (sheet column splits, else render.splits)."""
    splits = _sheet.scene_splits(config, SCENES[scene])
    return [f"{scene_dir(scene)}/render/{split}.{video_format()}" for split in splits]


def camera_path_file(wc):
    """The camera-path file of a split ``path_<name>``; other splits have none."""
    if wc.split.startswith("path_"):
        return f"results/{wc.scene}/paths/{wc.split[len('path_'):]}.npz"
    return []


def evaluate_gt(wc):
    """The ground truth of a synthetic scene (held-out views); other scenes have none."""
    if _sheet.synthetic_preset(SCENES[wc.scene]) is not None:
        return f"results/{wc.scene}/gt/scene.npz"
    return []


def export_targets(scene):
    """The exports of a scene (rules export_colmap and export; each writes more files than
    the one listed here)."""
    d = scene_dir(scene)
    return [f"{d}/export/colmap", f"{d}/export/transforms.json"]


def all_targets():
    """Everything for every scene: priors, trained model, render splits, evaluation, exports,
    and the summary table."""
    targets = []
    for scene in SCENES:
        priors = preprocess_targets(scene)
        if not KEEP_INTERMEDIATES:  # not targets, or Snakemake would keep them
            priors = [t for t in priors if t not in intermediate_outputs(scene)]
        targets += priors + render_targets(scene)
        targets.append(f"{scene_dir(scene)}/eval/metrics.json")
        targets += export_targets(scene)
    return targets + ["results/summary.csv"]


def summary_after_error():
    """onerror: write results/summary.csv anyway, with a row per scene (failed or missing ones
    marked, with their log), so that a batch run with --keep-going still has its table."""
    if not Path("results").is_dir() or not SCENES:
        return
    from nsff_core.report import write_summary

    try:
        splits = {s: _sheet.scene_splits(config, SCENES[s]) for s in SCENES}
        write_summary(list(SCENES), "results/summary.csv", "results", splits=splits)
    except Exception as exc:  # never hide the error that stopped the workflow
        print(f"could not write results/summary.csv after the error: {exc}", file=sys.stderr)
