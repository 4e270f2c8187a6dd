"""Where everything lives under ``results/``: the one place that names the files and folders of a
scene (``results/{scene}/...``) and of the batch (``results/summary.csv``, ``results/report/``).

The rules build their input, output, log and benchmark paths from :class:`SceneLayout` (with
the root ``results/{scene}``, so the names carry Snakemake's wildcard), and the summary and the
report read a finished scene through it (with the root ``results/<name>``). Every name is a
plain ``str`` joined with ``/``, exactly the string a rule declares, so that Snakemake matches
the two. Only the standard library is imported: the Snakefile imports this at parse time.

Scene folder, by the rule that writes each entry:

======================================  ==================  ===================================
path under ``results/{scene}``          rule                content
======================================  ==================  ===================================
``source/video.mp4``, ``gt/scene.npz``  synthetic           video and ground truth of a
                                                            synthetic scene
``weights.json``                        weights             the checkpoints the priors use
``weights_evaluate.json``               weights_evaluate    the LPIPS checkpoints evaluate
                                                            uses (or why there are none)
``frames/``, ``frames.json``            frames              training frames, where they came
                                                            from
``flow_fw/``, ``flow_bw/``,             flow                forward/backward flow, consistency
``flow_ok/``                                                masks
``flow_holdout/``                       flow_holdout        flow between training frames
                                                            (``eval.holdout_every`` only)
``sfm_masks/``                          sfm_masks           motion masks for SfM and depth
``sfm/``, ``cameras.npz``,              sfm                 COLMAP workspace, cameras, LLFF
``poses_bounds.npy``                                        poses
``disp/``                               depth               per-frame disparity
``masks/``                              masks               the motion masks training sees
``diagnostics/``                        diagnose            checks of the priors, images
``train/``                              train               ``last.ckpt``, ``config.json``,
                                                            ``metrics.csv`` (``running/`` while
                                                            it runs)
``render/{split}.{fmt}``,               render              videos (colour and the
``render/{split}_{part}.{fmt}``,                            ``depth``/``static``/``dynamic``
``render/{split}/``                                         parts) and frames of a split
``paths/{name}.npz``                    (the user)          camera path of split ``path_{name}``
``eval/metrics.json``, ``eval/novel/``  evaluate            scores, held-out views
``export/``                             export_colmap,      COLMAP text model, nerfstudio
                                        export              files, depth, masks, point cloud
``logs/{job}.log``                      every rule          the job's log
``benchmarks/{job}.tsv``                every rule          the job's time and memory
======================================  ==================  ===================================

A job name ``{job}`` is the rule's name, ``render_{split}`` for a render split.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the folder of every output, relative to the working directory
RESULTS = "results"
#: the parts of a render split besides its colour video, by the suffix of their file names
RENDER_PARTS = ("depth", "static", "dynamic")
#: the images of rule diagnose, by role (file names under ``diagnostics/``)
DIAGNOSTIC_IMAGES = {
    "contact_sheet": "contact_sheet.png",
    "per_frame": "per_frame.png",
    "camera_path": "camera_path.png",
    "depth": "depth_vs_sfm.png",
}
#: the verdict of rule diagnose (under ``diagnostics/``)
DIAGNOSTICS_JSON = "diagnostics.json"


@dataclass(frozen=True)
class SceneLayout:
    """The files and folders of one scene under ``root``.

    Attributes:
        root: the scene's folder, ``results/<scene>``; ``results/{scene}`` in the rules (see
            :meth:`pattern`).
    """

    root: str

    @classmethod
    def of(cls, scene: str, results: str = RESULTS) -> SceneLayout:
        """The layout of scene ``scene`` under the results folder ``results``."""
        return cls(f"{results}/{scene}")

    @classmethod
    def pattern(cls) -> SceneLayout:
        """The layout with Snakemake's ``{scene}`` wildcard in place of the scene's name."""
        return cls.of("{scene}")

    def _at(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # ------------------------------------------------------------------ sources and priors

    @property
    def source_video(self) -> str:
        """The video rule synthetic renders for a synthetic scene (its source)."""
        return self._at("source", "video.mp4")

    @property
    def gt(self) -> str:
        """A synthetic scene's ground truth: cameras, frames and held-out views (.npz)."""
        return self._at("gt", "scene.npz")

    @property
    def weights(self) -> str:
        """Marker of rule weights: the resolved checkpoints of the scene's prior backends."""
        return self._at("weights.json")

    @property
    def weights_evaluate(self) -> str:
        """Marker of rule weights_evaluate: the resolved LPIPS checkpoints of rule evaluate, and
        the reason for each one that is unavailable (LPIPS is optional)."""
        return self._at("weights_evaluate.json")

    @property
    def frames(self) -> str:
        """Folder of the training frames (PNG)."""
        return self._at("frames")

    @property
    def frames_json(self) -> str:
        """Where the frames came from (source, indices, sizes)."""
        return self._at("frames.json")

    @property
    def flow_fw(self) -> str:
        return self._at("flow_fw")

    @property
    def flow_bw(self) -> str:
        return self._at("flow_bw")

    @property
    def flow_ok(self) -> str:
        """Forward-backward consistency masks of the flow."""
        return self._at("flow_ok")

    @property
    def flow_holdout(self) -> str:
        """Flow between consecutive training frames (a scene with held-out frames only)."""
        return self._at("flow_holdout")

    @property
    def sfm_masks(self) -> str:
        """Motion masks made from the flow alone, for SfM and the depth prior."""
        return self._at("sfm_masks")

    @property
    def masks(self) -> str:
        """The final motion masks (255 = dynamic) that training sees."""
        return self._at("masks")

    @property
    def sfm(self) -> str:
        """COLMAP's workspace (``sparse/0`` holds the model)."""
        return self._at("sfm")

    @property
    def cameras(self) -> str:
        """Cameras of the training frames (.npz: c2w, K, bounds, ...)."""
        return self._at("cameras.npz")

    @property
    def poses_bounds(self) -> str:
        """The cameras in LLFF's poses_bounds.npy format."""
        return self._at("poses_bounds.npy")

    @property
    def disp(self) -> str:
        """Per-frame disparity maps at training resolution."""
        return self._at("disp")

    @property
    def diagnostics(self) -> str:
        """Folder of rule diagnose."""
        return self._at("diagnostics")

    @property
    def diagnostics_json(self) -> str:
        return self._at("diagnostics", DIAGNOSTICS_JSON)

    def diagnostic_image(self, role: str) -> str:
        """A diagnose image by its role, a key of :data:`DIAGNOSTIC_IMAGES`."""
        return self._at("diagnostics", DIAGNOSTIC_IMAGES[role])

    # ------------------------------------------------------------------ model and results

    @property
    def train(self) -> str:
        """Folder of rule train."""
        return self._at("train")

    @property
    def checkpoint(self) -> str:
        """The trained model."""
        return self._at("train", "last.ckpt")

    @property
    def train_config(self) -> str:
        """The settings the model was trained with (JSON)."""
        return self._at("train", "config.json")

    @property
    def train_metrics(self) -> str:
        """Per-step losses and training PSNR (CSV)."""
        return self._at("train", "metrics.csv")

    @property
    def train_running(self) -> str:
        """Checkpoints of a run in progress (a rerun after a crash resumes there)."""
        return self._at("train", "running")

    @property
    def render(self) -> str:
        """Folder of the render splits."""
        return self._at("render")

    def render_video(self, split: str, video_format: str, part: str | None = None) -> str:
        """The video of a render split (``part`` None: colour; else one of
        :data:`RENDER_PARTS`) in ``video_format`` (mp4 or gif)."""
        if part is not None and part not in RENDER_PARTS:
            raise ValueError(f"unknown render part {part!r}; expected one of {RENDER_PARTS}")
        suffix = "" if part is None else f"_{part}"
        return self._at("render", f"{split}{suffix}.{video_format}")

    def render_frames(self, split: str) -> str:
        """Folder of a render split's frames (PNG)."""
        return self._at("render", split)

    @property
    def camera_paths(self) -> str:
        """Folder of the user's camera-path files."""
        return self._at("paths")

    def camera_path(self, name: str) -> str:
        """The camera-path file of split ``path_{name}``."""
        return self._at("paths", f"{name}.npz")

    @property
    def eval_metrics(self) -> str:
        """Scores of rule evaluate (JSON)."""
        return self._at("eval", "metrics.json")

    @property
    def eval_novel(self) -> str:
        """Held-out views rendered by rule evaluate."""
        return self._at("eval", "novel")

    def export(self, name: str) -> str:
        """An entry of ``export/``: colmap, transforms.json, depth, depth_scale.json, masks or
        points.ply."""
        if name not in EXPORTS:
            raise ValueError(f"unknown export {name!r}; expected one of {EXPORTS}")
        return self._at("export", name)

    # ------------------------------------------------------------------ every job

    @property
    def logs(self) -> str:
        return self._at("logs")

    def log(self, job: str) -> str:
        """The log of job ``job`` (a rule's name, ``render_{split}`` for a render split)."""
        return self._at("logs", f"{job}.log")

    def benchmark(self, job: str) -> str:
        """Snakemake's benchmark of job ``job`` (TSV)."""
        return self._at("benchmarks", f"{job}.tsv")


#: the entries of ``export/`` (rule export_colmap writes colmap, rule export the rest)
EXPORTS = ("colmap", "transforms.json", "depth", "depth_scale.json", "masks", "points.ply")


@dataclass(frozen=True)
class BatchLayout:
    """The files of the whole batch directly under ``root`` (``results``)."""

    root: str = RESULTS

    def scene(self, scene: str) -> SceneLayout:
        return SceneLayout.of(scene, self.root)

    @property
    def summary_csv(self) -> str:
        """One row per scene (rule summary)."""
        return f"{self.root}/summary.csv"

    def report_section(self, section: str) -> str:
        """A folder of items of the ``snakemake --report`` page (rule summary)."""
        return f"{self.root}/report/{section}"

    def log(self, job: str) -> str:
        return f"{self.root}/logs/{job}.log"

    def benchmark(self, job: str) -> str:
        return f"{self.root}/benchmarks/{job}.tsv"
