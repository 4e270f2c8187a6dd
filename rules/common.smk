# Start-up checks and input functions shared by all rules.

import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

sys.path.insert(0, workflow.basedir)

from nsff_core.workflow import sheet as _sheet
from nsff_core.errors import ConfigError
from nsff_core.workflow.layout import BatchLayout, SceneLayout
from nsff_core.model.paths import SPLIT_PATTERN, parse_split

#: the files of a scene with the {scene} wildcard (rules' inputs, outputs, logs, benchmarks)
SCENE = SceneLayout.pattern()
#: the batch's own files under results/ (summary table, report items)
BATCH = BatchLayout()


def _load_scenes():
    schemas = Path(workflow.basedir) / "rules" / "schemas"
    try:
        _sheet.validate_config(config, schemas / "config.schema.yaml")
        for message in _sheet.moved_key_warnings(config):
            logger.warning(f"Warning: {message}")
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


def _workflow_config():
    """The workflow's own settings (top-level keys; WorkflowConfig in nsff_core/config.py)."""
    from nsff_core.config import workflow_config

    return workflow_config(config)


#: config keep_intermediates; false marks the large intermediates temp()
KEEP_INTERMEDIATES = _workflow_config().keep_intermediates


wildcard_constraints:
    scene="|".join(map(re.escape, SCENES)) if SCENES else "[^/]+",
    # the split grammar of nsff_core/model/paths.py: a malformed name matches no rule
    split=SPLIT_PATTERN,


def scene_layout(scene):
    """The files of one scene (nsff_core/workflow/layout.py)."""
    return BATCH.scene(scene)


def stage_cfg(stage):
    """Params function: the stage's settings for a scene (global config + sheet overrides)."""
    return lambda wc: _sheet.scene_stage_config(config, SCENES[wc.scene], stage)


def stage_setting(stage, key):
    """Params function: one setting of a stage for a scene, its default from the stage's
    dataclass in nsff_core/config.py (the one home of the defaults)."""
    from nsff_core.config import stage_config

    return lambda wc: getattr(stage_config(stage, stage_cfg(stage)(wc)), key)


def weights_config():
    """The typed ``weights`` section (cache folder, trust on first use)."""
    from nsff_core.config import stage_config

    return stage_config("weights", _sheet.scene_stage_config(config, {}, "weights"))


def train_gpus(wc):
    """The scene's train.gpus (its train_preset applied): the job's GPUs, one DDP process each."""
    return stage_setting("train", "gpus")(wc)


def pretrained(wc, stage):
    """Whether the scene's backend of a prior stage wants a GPU (and more memory): its record
    in the backend registry nsff_core/priors/backends.py."""
    from nsff_core.priors.backends import needs_gpu

    return needs_gpu(stage, stage_setting(stage, "backend")(wc))


def pretrained_gpu(stage):
    """Resources function: one GPU for a pretrained backend, none otherwise."""
    return lambda wc: 1 if pretrained(wc, stage) else 0


def synthetic_cfg(wc):
    return config["synthetic"][_sheet.synthetic_preset(SCENES[wc.scene])]


def source_path(wc):
    """The scene's source as given in the sheet, or the video of its synthetic scene."""
    row = SCENES[wc.scene]
    if _sheet.synthetic_preset(row) is not None:
        return scene_layout(wc.scene).source_video
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
    from nsff_core.config import stage_config

    values = _sheet.scene_stage_config(config, SCENES[scene], "eval")
    return int(stage_config("eval", values).holdout_every or 0)


def holdout_every(wc):
    """Params function: :func:`scene_holdout_every` of the job's scene."""
    return scene_holdout_every(wc.scene)


def holdout_flow(wc):
    """The flow between training frames, for a scene with held-out frames; else none."""
    return scene_layout(wc.scene).flow_holdout if holdout_every(wc) else []


def intermediate_outputs(scene):
    """The outputs that :func:`intermediate` marks, of one scene."""
    d = scene_layout(scene)
    paths = [d.flow_fw, d.flow_bw, d.flow_ok, d.sfm, d.disp]
    if scene_holdout_every(scene):
        paths.append(d.flow_holdout)
    return paths


def preprocess_targets(scene):
    """The priors of a scene (rule priors). Without keep_intermediates every intermediate is
    listed: what a target rule asks for is never deleted, so `snakemake priors` keeps them."""
    d = scene_layout(scene)
    targets = [d.frames_json, d.flow_fw, d.masks, d.cameras, d.disp, d.diagnostics_json]
    if not KEEP_INTERMEDIATES:
        targets += [t for t in intermediate_outputs(scene) if t not in targets]
    return targets


def video_format():
    """render.video_format (one for all scenes: the sheet cannot override it)."""
    from nsff_core.config import stage_config

    return stage_config("render", _sheet.scene_stage_config(config, {}, "render")).video_format


def render_targets(scene):
    """The videos of the scene's render splits (sheet column splits, else render.splits)."""
    splits = _sheet.scene_splits(config, SCENES[scene])
    return [scene_layout(scene).render_video(split, video_format()) for split in splits]


def camera_path_file(wc):
    """The camera-path file of a split ``path_<name>``; other splits have none."""
    try:
        spec = parse_split(wc.split)  # the wildcard constraint lets only this grammar through
    except ValueError:
        return []  # a value out of range (interp above its maximum): the render job says so
    if spec.kind == "path":
        return scene_layout(wc.scene).camera_path(spec.path_name)
    return []


def evaluate_gt(wc):
    """The ground truth of a synthetic scene (held-out views); other scenes have none."""
    if _sheet.synthetic_preset(SCENES[wc.scene]) is not None:
        return scene_layout(wc.scene).gt
    return []


def export_targets(scene):
    """The exports of a scene (rules export_colmap and export; each writes more files than
    the one listed here)."""
    d = scene_layout(scene)
    return [d.export("colmap"), d.export("transforms.json")]


def all_targets():
    """Everything for every scene: priors, trained model, render splits, evaluation, exports,
    and the summary table."""
    targets = []
    for scene in SCENES:
        priors = preprocess_targets(scene)
        if not KEEP_INTERMEDIATES:  # not targets, or Snakemake would keep them
            priors = [t for t in priors if t not in intermediate_outputs(scene)]
        targets += priors + render_targets(scene)
        targets.append(scene_layout(scene).eval_metrics)
        targets += export_targets(scene)
    return targets + [BATCH.summary_csv]


def summary_after_error():
    """onerror: write results/summary.csv anyway, with a row per scene (failed or missing ones
    marked, with their log), so that a batch run with --keep-going still has its table."""
    if not Path(BATCH.root).is_dir() or not SCENES:
        return
    from nsff_core.workflow.report import write_summary

    try:
        splits = {s: _sheet.scene_splits(config, SCENES[s]) for s in SCENES}
        write_summary(list(SCENES), BATCH.summary_csv, BATCH.root, splits=splits)
    except Exception as exc:  # never hide the error that stopped the workflow
        print(f"could not write {BATCH.summary_csv} after the error: {exc}", file=sys.stderr)
