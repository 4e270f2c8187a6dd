"""Bad-input and fault cases of the workflow, tried as a user and an operator would.

Each case builds tiny inputs in its own folder under ``--workdir`` (``synthetic:tiny`` scenes,
the ``tiny`` train preset, or small image folders made with numpy and OpenCV), runs Snakemake
on the checkout under test (``--repo``) as a user would (``--snakefile REPO/Snakefile
--directory CASE --cores 2``), or calls the library where that is how a user meets the case,
then looks at what happened: the exit code, the console, the files left and the logs. The
outcome is sorted into

- ``clear error``: non-zero exit, no raw traceback on the console, and a message that names the
  scene, file, config key or sheet row (an error inside a job must also say what to do);
  for the faults injected into a job (cases 7 to 9: the exception itself is not a user error)
  what is judged is the record the failure leaves: exit code, ``summary.csv`` status, the rule
  log, the files left;
- ``accepted``: the input ran and the result was checked to be right;
- ``BAD: <how>``: exit 0 with a broken result, a raw traceback, a signal, a hang past the case's
  timeout, stale outputs that look current, an error that names nothing.

Every category comes from an observation; each row also says which outcome is the good one.
The result is a Markdown table on stdout; the full console output of every command and the
observations are in ``WORKDIR/logs/<case>.log``. Case folders are removed afterwards (``--keep``
keeps them); the repository under test is only read.

Faults inside a job are injected with a ``sitecustomize`` module put on ``PYTHONPATH``: it
patches one function in the job process of one rule (environment variable ``NSFF_FAULT``) and
leaves every other process alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

SCENE = "tiny"
#: the scene of the cases that need priors or a trained model (one render split: test)
SHEET = f"scene\tsource\ttrain_preset\tsplits\n{SCENE}\tsynthetic:tiny\ttiny\ttest\n"
TRACEBACK = "Traceback (most recent call last)"
#: address-space limit of the cases whose bug is a huge allocation: it fails fast instead of
#: pushing a shared machine into swap or the OOM killer
MEM_LIMIT = 10 * 2**30

HOOK = '''\
"""Fault injection of benchmarks/fault_cases.py (written there; not part of the workflow).

NSFF_FAULT (JSON): in the process that runs workflow_scripts/<script>.py, wrap module.attr so
that it fails as `mode` says; marker files in `marks` record that the hook was armed and fired.
"""
import json
import os
import sys

_spec = json.loads(os.environ.get("NSFF_FAULT") or "null")
if _spec and sys.argv and sys.argv[0].endswith("." + _spec["script"] + ".py"):
    import errno
    import importlib
    import signal

    def _mark(name, text=""):
        with open(os.path.join(_spec["marks"], name), "w") as f:
            f.write(str(text))

    try:
        _owner = importlib.import_module(_spec["module"])
        *_parents, _name = _spec["attr"].split(".")
        for _p in _parents:
            _owner = getattr(_owner, _p)
        _orig = getattr(_owner, _name)
    except Exception as _exc:  # the target moved: the case reports it
        _mark("missing", repr(_exc))
    else:
        import nsff_core

        _mark("armed", nsff_core.__file__)
        _calls = [0]

        def _fault(*args, **kwargs):
            _calls[0] += 1
            mode = _spec["mode"]
            if mode in ("kill_at_step", "readonly_at_step"):
                step = int(args[0].global_step)
                _mark("last_step", step)
                fired = os.path.join(_spec["marks"], "fired")
                if step >= _spec["step"] and not os.path.exists(fired):
                    _mark("fired", step)
                    if mode == "kill_at_step":
                        os.kill(os.getpid(), signal.SIGKILL)
                    ckpt = os.path.join(_spec["path"], "last.ckpt")
                    if os.path.exists(ckpt):
                        os.chmod(ckpt, 0o444)
                    os.chmod(_spec["path"], 0o555)
            elif _calls[0] >= _spec.get("n", 1):
                _mark("fired", _calls[0])
                if mode == "runtime_error":
                    raise RuntimeError("injected fault (not a StageError)")
                if mode == "stage_error":
                    from nsff_core.errors import StageError

                    raise StageError(_spec.get("scene"), _spec["script"], "injected failure",
                                     "nothing (injected by the benchmark)")
                if mode == "enospc":
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return _orig(*args, **kwargs)

        setattr(_owner, _name, _fault)
'''


class HarnessError(RuntimeError):
    """The benchmark itself could not set a case up (reported as such, not as an outcome)."""


@dataclass
class Run:
    """One command: exit code (None: killed at the timeout), console (stdout + stderr)."""

    cmd: list[str]
    rc: int | None
    out: str
    seconds: float
    timeout: float

    @property
    def timed_out(self) -> bool:
        return self.rc is None


@dataclass
class Outcome:
    category: str
    message: str


def bad(how: str, message: str = "") -> Outcome:
    return Outcome(f"BAD: {how}", message)


# --------------------------------------------------------------------------- reading a console


def exception_line(out: str) -> str:
    """The exception line of the last traceback in ``out`` ("Type: message")."""
    lines = out[out.rfind(TRACEBACK) :].splitlines()[1:]
    for ln in lines:
        if ln and not ln[0].isspace():
            return ln.strip()
    return ""


def error_message(out: str) -> tuple[str, str]:
    """The first line of the error a user reads on the console, and a block of up to four
    lines from there (for the hint and the names)."""
    lines = out.splitlines()
    for i, ln in enumerate(lines):  # our StageError format
        m = re.search(r"\[(scene '.*?', )?rule '[^']*'\].*", ln)
        if m:
            return m.group(0).strip(), "\n".join([m.group(0), *lines[i + 1 : i + 4]])
    if TRACEBACK in out:
        first = exception_line(out)
        return first, first
    for i, ln in enumerate(lines):  # Snakemake's own errors: "WorkflowError:" then the text
        m = re.match(r"^(\w+(Error|Exception))( in [^:]*)?:\s*(.*)$", ln.strip())
        if m and m.group(1) not in ("RuleException", "CalledProcessError"):
            rest = [x.strip() for x in lines[i + 1 : i + 5] if x.strip()]
            text = m.group(4) or (rest.pop(0) if rest else "")
            if text.endswith(":") and rest:  # "...: " and the subject on the next line
                text += " " + rest[0]
            return f"{m.group(1)}: {text}", "\n".join([f"{m.group(1)}: {text}", *rest])
    for ln in lines:
        if "non-zero exit status" in ln or "died with <Signals" in ln:
            return ln.strip(), ln.strip()
    tail = [ln.strip() for ln in lines if ln.strip()]
    return (tail[-1], tail[-1]) if tail else ("(no output)", "")


def job_signal(run: Run) -> str | None:
    """The signal that ended the command or one of its Snakemake jobs, if any."""
    if run.rc is not None and run.rc < 0:
        return signal.Signals(-run.rc).name
    m = re.search(r"died with <Signals\.(\w+)", run.out)
    if m:
        return m.group(1)
    for status in re.findall(r"non-zero exit status (\d+)", run.out):
        if int(status) > 128:
            try:
                return signal.Signals(int(status) - 128).name
            except ValueError:
                pass
    if "Segmentation fault" in run.out:
        return "SIGSEGV"
    return None


def jobs_started(out: str) -> list[str]:
    """Rules of the jobs Snakemake started, in order, once each."""
    names = re.findall(r"^\s*(?:local)?rule (\w+):\s*$", out, flags=re.MULTILINE)
    return list(dict.fromkeys(names))


def judge_error(run: Run, needles: list[str], startup: bool = False) -> Outcome:
    """Sort a failed run: ``clear error`` or ``BAD: <how>``.

    ``needles``: strings of which the message must contain one (scene, file, key, row).
    ``startup``: the good outcome is a refusal before any job (a config or sheet check).
    """
    if run.timed_out:
        return bad(f"hang, killed after {run.timeout:.0f} s", error_message(run.out)[0])
    first, block = error_message(run.out)
    sig = job_signal(run)
    if sig:
        where = next(
            (
                ln.strip()
                for ln in run.out.splitlines()
                if "died with <Signals" in ln or "exit status" in ln or "Segmentation" in ln
            ),
            first,
        )
        return bad(f"{sig} in a job", re.sub(r"Command '.*?' ", "job ", where))
    if run.rc == 0:
        return Outcome("accepted", "exit 0")
    jobs = jobs_started(run.out)
    if startup and jobs:
        return bad(f"passed start-up, failed in rule {jobs[-1]} (after {', '.join(jobs)})", first)
    named = any(n.lower() in block.lower() for n in needles)
    if TRACEBACK in run.out:
        return bad("raw traceback" + ("" if named else " naming no file"), first)
    if not named:
        return bad("the error names no scene, file, key or row", first)
    if not startup and "what to do" not in block.lower():
        return bad("the error says not what to do", first)
    return Outcome("clear error", first)


# --------------------------------------------------------------------------- the harness


class Ctx:
    """Paths, commands and the shared base runs of one benchmark run."""

    def __init__(self, repo: Path, workdir: Path, keep: bool, reuse: bool = False) -> None:
        self.repo, self.workdir, self.keep, self.reuse = repo, workdir, keep, reuse
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.hook = workdir / "_hook"
        self.hook.mkdir(exist_ok=True)
        (self.hook / "sitecustomize.py").write_text(HOOK)
        self._bases: dict[str, Path] = {}
        self._lock = threading.RLock()

    def env(self, **extra: str | None) -> dict[str, str]:
        """The environment of every command: the checkout under test first on PYTHONPATH, no
        bytecode written into it, no NSFF_/TORCH_FORCE_ variables of the caller."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NSFF_", "TORCH_FORCE_", "SNAKEMAKE"))
        }
        env.update(PYTHONPATH=str(self.repo), PYTHONDONTWRITEBYTECODE="1")
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def run(
        self,
        cmd: list[str],
        cwd: Path,
        log: Path,
        timeout: float,
        env: dict[str, str] | None = None,
        umask: int = -1,
        prefix: list[str] | None = None,
    ) -> Run:
        """Run ``cmd`` in its own process group; on timeout kill that group."""
        full = [*(prefix or []), *cmd]
        t0 = time.monotonic()
        p = subprocess.Popen(
            full,
            cwd=cwd,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            umask=umask,
        )
        try:
            out, _ = p.communicate(timeout=timeout)
            rc: int | None = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            rc = None
        run = Run(full, rc, out, time.monotonic() - t0, timeout)
        with open(log, "a") as f:
            f.write(f"\n$ (cd {cwd}) {' '.join(full)}\n")
            f.write(out)
            f.write(f"\n[exit {rc if rc is not None else 'TIMEOUT'}, {run.seconds:.0f} s]\n")
        # a traceback through another checkout's nsff_core means the case tested the wrong code
        for path in re.findall(r'File "([^"]*/nsff_core/[^"]*)"', out):
            if not Path(path).resolve().is_relative_to(self.repo):
                raise HarnessError(f"the command ran {path}, not the checkout under test")
        return run

    def snakemake(self, wd: Path, *args: str, log: Path, timeout: float = 300, **kw) -> Run:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(self.repo / "Snakefile"),
            "--configfile",
            str(wd / "config.yaml"),
            "--directory",
            str(wd),
            "--cores",
            "2",
            *args,
        ]
        return self.run(cmd, wd, log, timeout, **kw)

    def python(
        self, code: str, cwd: Path, log: Path, *args: str, timeout: float = 300, **kw
    ) -> Run:
        """Run ``code`` (arguments ``args``); when it prints ``NSFF_CORE <file>`` (the
        nsff_core it imported), check that this is the checkout under test."""
        run = self.run([sys.executable, "-c", code, *args], cwd, log, timeout, **kw)
        m = re.search(r"^NSFF_CORE (.*)$", run.out, flags=re.MULTILINE)
        if m and not Path(m.group(1)).resolve().is_relative_to(self.repo):
            raise HarnessError(f"imported {m.group(1)}, not the checkout under test")
        return run

    def config(self, wd: Path, overrides: dict | None = None, sheet: str | bytes = SHEET) -> None:
        """``wd/config.yaml`` (the checkout's own config.yaml with ``overrides`` merged in,
        sheet ``scenes.tsv``) and ``wd/scenes.tsv``."""
        cfg = yaml.safe_load((self.repo / "config.yaml").read_text())
        cfg["scenes"] = "scenes.tsv"
        merge(cfg, overrides or {})
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        data = sheet.encode() if isinstance(sheet, str) else sheet
        (wd / "scenes.tsv").write_bytes(data)

    def base(self, kind: str) -> Path:
        """A finished run shared by the cases (they work on copies): ``priors`` (every prior of
        the scene ``tiny``) or ``trained`` (the whole default target: train, render test,
        evaluate, summary)."""
        with self._lock:
            if kind in self._bases:
                return self._bases[kind]
            wd = self.workdir / f"_base_{kind}"
            log = self.logdir / f"_base_{kind}.log"
            stamp = wd / ".fault_cases_base"
            if self.reuse and stamp.exists() and stamp.read_text() == str(self.repo):
                self._bases[kind] = wd
                return wd
            shutil.rmtree(wd, ignore_errors=True)
            if kind == "priors":
                self.config(wd)
                run = self.snakemake(wd, "priors", log=log, timeout=900)
            else:
                shutil.copytree(self.base("priors"), wd, symlinks=True)
                run = self.snakemake(wd, log=log, timeout=900)
            if run.rc != 0:
                raise HarnessError(f"base run '{kind}' failed (exit {run.rc}, see {log})")
            stamp.write_text(str(self.repo))
            self._bases[kind] = wd
            return wd

    def cleanup(self) -> None:
        if not (self.keep or self.reuse):
            for wd in self._bases.values():
                shutil.rmtree(wd, ignore_errors=True)
            shutil.rmtree(self.hook, ignore_errors=True)


def merge(into: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


class Case:
    """One case's folder, log and commands."""

    def __init__(self, ctx: Ctx, num: int, key: str) -> None:
        self.ctx, self.num, self.key = ctx, num, key
        self.dir = ctx.workdir / f"case{num:02d}_{key}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.log = ctx.logdir / f"{num:02d}_{key}.log"
        self.log.write_text(f"case {num} {key}; repo {ctx.repo}\n")

    def note(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"[observed] {text}\n")

    def wd(self, name: str = "wd", base: str | None = None) -> Path:
        """A workflow folder: empty, or a copy (times kept) of a base run."""
        wd = self.dir / name
        if base is not None:
            shutil.copytree(self.ctx.base(base), wd, symlinks=True)
        else:
            wd.mkdir(parents=True)
        return wd

    def snakemake(self, wd: Path, *args: str, **kw) -> Run:
        return self.ctx.snakemake(wd, *args, log=self.log, **kw)

    def python(self, code: str, *args: str, cwd: Path | None = None, **kw) -> Run:
        return self.ctx.python(code, cwd or self.dir, self.log, *args, **kw)

    def fault(self, script: str, module: str, attr: str, mode: str, **spec) -> dict[str, str]:
        """Environment that arms the fault hook; marker files go to ``self.dir/marks``."""
        marks = self.dir / "marks"
        marks.mkdir(exist_ok=True)
        spec = dict(script=script, module=module, attr=attr, mode=mode, marks=str(marks), **spec)
        return self.ctx.env(
            PYTHONPATH=os.pathsep.join([str(self.ctx.hook), str(self.ctx.repo)]),
            NSFF_FAULT=json.dumps(spec),
        )

    def mark(self, name: str) -> str | None:
        p = self.dir / "marks" / name
        return p.read_text() if p.exists() else None

    def require_fired(self) -> None:
        missing = self.mark("missing")
        if missing is not None:
            raise HarnessError(f"fault hook target not found in this checkout: {missing}")
        armed = self.mark("armed")
        if armed is None:
            raise HarnessError("the fault hook was never armed (job did not run?)")
        if not Path(armed).resolve().is_relative_to(self.ctx.repo):
            raise HarnessError(f"the job imported {armed}, not the checkout under test")
        if self.mark("fired") is None:
            raise HarnessError("the injected fault never fired")


@dataclass
class CaseSpec:
    num: int
    key: str
    what: str
    good: str
    fn: Callable[[Ctx, Case], Outcome]


CASES: list[CaseSpec] = []


def case(num: int, key: str, what: str, good: str):
    def deco(fn: Callable[[Ctx, Case], Outcome]) -> Callable[[Ctx, Case], Outcome]:
        CASES.append(CaseSpec(num, key, what, good, fn))
        return fn

    return deco


# --------------------------------------------------------------------------- observations


def ckpt_state(path: Path) -> str:
    """'missing', 'unreadable (...)', 'finite' or '<k> of <n> values non-finite'."""
    import torch

    if not path.exists():
        return "missing"
    try:  # our own file, written by the run under test: full unpickling is fine here
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    tensors = [t for t in ck.get("state_dict", {}).values() if torch.is_tensor(t)]
    n = sum(t.numel() for t in tensors)
    bad_values = sum(int((~torch.isfinite(t.float())).sum()) for t in tensors)
    return "finite" if bad_values == 0 else f"{bad_values} of {n} values non-finite"


def ckpt_step(path: Path) -> int | None:
    """The global step a Lightning checkpoint was saved at (None: unreadable)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception:
        return None


def summary_row(wd: Path, scene: str = SCENE) -> dict[str, str]:
    p = wd / "results" / "summary.csv"
    if not p.exists():
        return {}
    with open(p, newline="") as f:
        return next((r for r in csv.DictReader(f) if r["scene"] == scene), {})


def summary_text(wd: Path, scene: str = SCENE) -> str:
    row = summary_row(wd, scene)
    if not row:
        return "no summary.csv row"
    return f"summary.csv: {row['status']} (psnr {row.get('psnr') or '-'})"


def first_line(outcome_msg: str, run: Run) -> str:
    code = "timeout" if run.timed_out else f"exit {run.rc}"
    return f"{code}: {outcome_msg}" if outcome_msg else code


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (H, W, 3) uint8: resizing it changes little."""
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), max(1.0, min(h, w) / 16))
    lo, hi = img.min(), img.max()
    return ((img - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)


def image_folder(folder: Path, n: int, h: int, w: int, ext: str = ".png") -> Path:
    import cv2

    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i:03d}{ext}"), texture(h, w, i))
    return folder


def sheet_row(scene: str, source: str | Path, **cols: object) -> str:
    names = ["scene", "source", *cols]
    values = [scene, str(source), *(str(v) for v in cols.values())]
    return "\t".join(names) + "\n" + "\t".join(values) + "\n"


# --------------------------------------------------------------------------- divergence


def run_with_train_config(ctx: Ctx, c: Case, train: dict, target: str | None) -> tuple[Run, Path]:
    wd = c.wd(base="priors")
    ctx.config(wd, {"train_presets": {"tiny": train}})
    run = c.snakemake(wd, *([target] if target else []), timeout=420)
    return run, wd


def divergence_outcome(c: Case, run: Run, wd: Path) -> Outcome:
    ckpt = ckpt_state(wd / "results" / SCENE / "train" / "last.ckpt")
    summary = summary_text(wd)
    c.note(f"train/last.ckpt: {ckpt}; {summary}")
    if run.rc == 0:
        if ckpt != "finite":
            return bad(f"exit 0, last.ckpt {ckpt}", f"exit 0; {summary}")
        return Outcome("accepted", f"exit 0; last.ckpt finite; {summary}")
    out = judge_error(run, [f"scene '{SCENE}'"])
    extra = f"; last.ckpt {ckpt}" if ckpt != "missing" else ""
    return Outcome(out.category, first_line(out.message, run) + extra + f"; {summary}")


@case(
    1,
    "mlp_lr_1e6",
    "field mlp (width 32, depth 8), lr 1e6, 30 steps; whole DAG from finished priors",
    "clear error (divergence: scene, step, what to try); no NaN checkpoint",
)
def _mlp_lr(ctx: Ctx, c: Case) -> Outcome:
    train = {"field": "mlp", "width": 32, "depth": 8, "lr": 1.0e6}
    run, wd = run_with_train_config(ctx, c, train, None)
    return divergence_outcome(c, run, wd)


@case(
    2,
    "planes_lr_1e6",
    "field planes (tiny), lr and grid_lr 1e6; train",
    "clear error (divergence); no signal, no NaN checkpoint",
)
def _planes_lr(ctx: Ctx, c: Case) -> Outcome:
    train = {"lr": 1.0e6, "grid_lr": 1.0e6}
    run, wd = run_with_train_config(ctx, c, train, f"results/{SCENE}/train/last.ckpt")
    return divergence_outcome(c, run, wd)


# --------------------------------------------------------------------------- NaN / inf settings


def config_value_case(
    ctx: Ctx, c: Case, overrides: dict, key: str, base: str | None, target: str | None = None
) -> Outcome:
    wd = c.wd(base=base)
    ctx.config(wd, overrides)
    run = c.snakemake(wd, *([target] if target else []), timeout=600)
    jobs = jobs_started(run.out)
    c.note(f"jobs started: {jobs}")
    if run.rc == 0:
        ckpt = ckpt_state(wd / "results" / SCENE / "train" / "last.ckpt")
        return bad(
            f"accepted; ran {', '.join(jobs) or 'nothing'}",
            f"exit 0; last.ckpt {ckpt}; {summary_text(wd)}",
        )
    out = judge_error(run, [key], startup=True)
    return Outcome(out.category, first_line(out.message, run))


@case(
    3,
    "lr_nan",
    "train.lr: .nan; default target in an empty folder",
    "clear error at start-up naming train.lr; no job runs",
)
def _lr_nan(ctx: Ctx, c: Case) -> Outcome:
    return config_value_case(ctx, c, {"train": {"lr": float("nan")}}, "train.lr", None)


@case(
    4,
    "fps_inf",
    "render.fps: .inf on a finished run (render reruns)",
    "clear error at start-up naming render.fps; no job runs",
)
def _fps_inf(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="trained")
    ctx.config(wd, {"render": {"fps": float("inf")}})
    run = c.snakemake(wd, timeout=400)
    if run.rc == 0:
        video = wd / "results" / SCENE / "render" / "test.mp4"
        fps = "?"
        try:
            import imageio.v3 as iio

            fps = iio.immeta(video, plugin="pyav").get("fps", "?")
        except Exception as exc:
            fps = f"unreadable ({type(exc).__name__})"
        return bad(
            f"accepted; ran {', '.join(jobs_started(run.out))}", f"exit 0; test.mp4 fps {fps}"
        )
    out = judge_error(run, ["render.fps"], startup=True)
    return Outcome(out.category, first_line(out.message, run))


@case(
    5,
    "max_time_nan",
    "train.max_time_minutes: .nan; default target in an empty folder",
    "clear error at start-up naming train.max_time_minutes",
)
def _max_time_nan(ctx: Ctx, c: Case) -> Outcome:
    overrides = {"train": {"max_time_minutes": float("nan")}}
    return config_value_case(ctx, c, overrides, "max_time_minutes", None)


@case(
    6,
    "grid_lr_inf",
    "train.grid_lr: .inf (planes preset); default target in an empty folder",
    "clear error at start-up naming train.grid_lr",
)
def _grid_lr_inf(ctx: Ctx, c: Case) -> Outcome:
    return config_value_case(ctx, c, {"train": {"grid_lr": float("inf")}}, "grid_lr", None)


# --------------------------------------------------------------------------- failed jobs


@case(
    7,
    "train_crash_summary",
    "injected RuntimeError in the train job; default target from finished priors",
    "injected: exit != 0, summary.csv 'failed' naming train.log, traceback in train.log",
)
def _train_crash(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="priors")
    ctx.config(wd)
    env = c.fault("train", "nsff_core.workflow.stages.train", "train_scene", "runtime_error")
    run = c.snakemake(wd, timeout=300, env=env)
    c.require_fired()
    row = summary_row(wd)
    train_log = wd / "results" / SCENE / "logs" / "train.log"
    logged = train_log.exists() and TRACEBACK in train_log.read_text(errors="replace")
    status = row.get("status", "no row")
    c.note(f"summary row {row}; traceback in train.log: {logged}")
    msg = f"exit {run.rc}; summary.csv: {status}, log {row.get('log') or '-'}; "
    msg += f"train.log {'has' if logged else 'lacks'} the traceback"
    if run.rc == 0:
        return bad("exit 0 after a failed job", msg)
    if status != "failed":
        return bad(f"summary.csv says '{status}'", msg)
    if not logged or not row.get("log", "").endswith("train.log"):
        return bad("the failure is not recorded in train.log", msg)
    return Outcome("clear error", msg)


@case(
    8,
    "retrain_fails_summary",
    "finished run (ok); train seed changed and the retraining fails (injected StageError)",
    "injected: summary.csv 'failed', not the old 'ok'",
)
def _retrain_fails(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="trained")
    before = summary_row(wd).get("status")
    ctx.config(wd, {"train_presets": {"tiny": {"seed": 7}}})
    env = c.fault(
        "train", "nsff_core.workflow.stages.train", "train_scene", "stage_error", scene=SCENE
    )
    run = c.snakemake(wd, timeout=300, env=env)
    c.require_fired()
    row = summary_row(wd)
    status = row.get("status", "no row")
    msg = f"exit {run.rc}; summary.csv before: {before}, after: {status} (log {row.get('log')})"
    c.note(msg)
    if run.rc == 0:
        return bad("exit 0 after a failed job", msg)
    if status != "failed":
        return bad(f"summary.csv still says '{status}'", msg)
    return Outcome("clear error", msg)


@case(
    9,
    "render_fails_stale_videos",
    "finished run; retrained (seed changed), then render fails (injected ENOSPC)",
    "injected: no video of the earlier model left in render/",
)
def _stale_videos(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="trained")
    ctx.config(wd, {"train_presets": {"tiny": {"seed": 7}}})
    env = c.fault("render", "nsff_core.workflow.stages.render_split", "render_split", "enospc")
    run = c.snakemake(wd, timeout=400, env=env)
    c.require_fired()
    res = wd / "results" / SCENE
    ckpt = res / "train" / "last.ckpt"
    if not ckpt.exists():
        raise HarnessError("the retraining did not finish, so the render never ran")
    new = ckpt.stat().st_mtime
    videos = sorted(p.name for p in (res / "render").glob("test*.mp4"))
    stale = sorted(p.name for p in (res / "render").glob("test*") if p.stat().st_mtime < new)
    msg = f"exit {run.rc}; left in render/: {', '.join(videos) or 'nothing'}"
    c.note(f"{msg}; older than the new last.ckpt: {stale}")
    if run.rc == 0:
        return bad("exit 0 after a failed render", msg)
    if stale:
        return bad(f"{len(stale)} outputs of the earlier model left: {', '.join(stale)}", msg)
    return Outcome("clear error", msg)


# --------------------------------------------------------------------------- checkpoints


@case(
    10,
    "truncated_running_ckpt",
    "train killed (SIGKILL) at step 15, running/last.ckpt cut to half, then rerun twice",
    "accepted: the rerun sets the bad checkpoint aside (warning) and trains",
)
def _truncated_ckpt(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="priors")
    ctx.config(wd)
    target = f"results/{SCENE}/train/last.ckpt"
    env = c.fault(
        "train", "nsff_core.model.system", "NSFFSystem.training_step", "kill_at_step", step=15
    )
    killed = c.snakemake(wd, target, timeout=300, env=env)
    c.require_fired()
    running = wd / "results" / SCENE / "train" / "running"
    ckpt = running / "last.ckpt"
    if killed.rc == 0 or not ckpt.exists():
        raise HarnessError(f"the kill left no running/last.ckpt (exit {killed.rc})")
    real = ckpt.resolve()
    size = real.stat().st_size
    with open(real, "r+b") as f:
        f.truncate(size // 2)
    c.note(f"truncated {real} from {size} to {size // 2} bytes")
    runs = [c.snakemake(wd, target, timeout=300)]
    if runs[0].rc != 0:
        runs.append(c.snakemake(wd, target, timeout=300))
    last = runs[-1]
    set_aside = sorted(p.name for p in running.parent.rglob("*corrupt*"))
    state = ckpt_state(wd / target)
    c.note(f"reruns: {[r.rc for r in runs]}; set aside: {set_aside}; last.ckpt {state}")
    if last.rc == 0:
        if state != "finite":
            return bad(f"exit 0, last.ckpt {state}", "exit 0")
        warning = next(
            (
                ln.strip()
                for ln in runs[0].out.splitlines()
                if re.search(r"\b(WARNING|Warning|warning)\b", ln)
                and any(w in ln.lower() for w in ("corrupt", "truncat", "set aside"))
            ),
            "",
        )
        msg = f"exit 0 after {len(runs)} rerun(s); left in train/: {', '.join(set_aside) or '-'}"
        msg += f"; warning: {warning or 'none'}"
        if len(runs) > 1 or not warning:
            return bad("the first rerun failed or said nothing", msg)
        return Outcome("accepted", msg)
    out = judge_error(last, ["last.ckpt"])
    how = "every rerun fails" + (f" ({out.category[5:]})" if out.category.startswith("BAD") else "")
    return bad(how, first_line(out.message, last))


@case(
    11,
    "readonly_running",
    "at step 15 of 30 (saves at 10, 20, 30) train/running/ and its last.ckpt made read-only",
    "clear error at the first failed save (step 20) naming the folder",
)
def _readonly_running(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="priors")
    ctx.config(wd)
    running = wd / "results" / SCENE / "train" / "running"
    env = c.fault(
        "train",
        "nsff_core.model.system",
        "NSFFSystem.training_step",
        "readonly_at_step",
        step=15,
        path=str(running),
    )
    # root ignores file modes: drop the two capabilities that let it, so the modes apply as
    # they do for any other user (the job's own chmod still works: it owns the folder)
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
        c.note("running as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv)")
    try:
        run = c.snakemake(
            wd, f"results/{SCENE}/train/last.ckpt", timeout=300, env=env, prefix=prefix
        )
    finally:
        if running.exists():
            running.chmod(0o755)
    c.require_fired()
    last = int(c.mark("last_step") or -1)
    saved = (
        {p.name: ckpt_step(p) for p in sorted(running.glob("*.ckpt*"))} if running.exists() else {}
    )
    c.note(f"exit {run.rc}; last step run {last}; checkpoints in running/ (step): {saved}")
    if run.rc == 0:
        return bad("exit 0 although checkpoints could not be written", f"exit 0, step {last}")
    out = judge_error(run, ["running"])
    msg = first_line(out.message, run) + f" (last step run: {last}; running/: {saved})"
    newest = max([s for s in saved.values() if s is not None], default=-1)
    if last > 21 and newest < 20:
        how = f"the save at step 20 failed silently; training went on to step {last}"
        return bad(how, msg)
    return Outcome(out.category, msg)


# --------------------------------------------------------------------------- source images


READ_SOURCE = """
import json, sys, numpy as np, cv2, nsff_core
print("NSFF_CORE", nsff_core.__file__)
from nsff_core.model import io
from nsff_core.priors.frames import read_source_frames
res = {}
meta = json.loads(open(sys.argv[1]).read())
frames = [io.read_image(p) for p in io.list_frames(sys.argv[2])]
try:
    src = list(read_source_frames(sys.argv[1], scene=sys.argv[3], stage="depth"))
    res["shapes"] = sorted({str(s.shape) for s in src})
    res["dtypes"] = sorted({str(s.dtype) for s in src})
    diffs = []
    for s, f in zip(src, frames):
        if s.ndim == 3 and s.shape[2] == 3:
            r = cv2.resize(s, (f.shape[1], f.shape[0]), interpolation=cv2.INTER_AREA)
            diffs.append(float(np.abs(r.astype(float) - f).mean()))
    res["diff"] = max(diffs) if diffs else None
except Exception as exc:
    res["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
print("RESULT", json.dumps(res))
"""


def result_json(run: Run) -> dict:
    m = re.search(r"^RESULT (.*)$", run.out, flags=re.MULTILINE)
    if not m:
        raise HarnessError(f"no result from the helper (exit {run.rc}): {exception_line(run.out)}")
    return json.loads(m.group(1))


def source_reader_case(ctx: Ctx, c: Case, folder: Path, expected: list[np.ndarray]) -> Outcome:
    """The frames rule on the image folder, then the source reader of the pretrained
    backends (as they call it): both must give ``expected`` (upright 8-bit RGB, (H, W, 3))."""
    import cv2

    wd = c.wd()
    h, w = expected[0].shape[:2]
    ctx.config(wd, sheet=sheet_row("src", folder, width=w))
    run = c.snakemake(wd, "results/src/frames.json", timeout=240)
    if run.rc != 0:
        out = judge_error(run, ["scene 'src'"])
        return Outcome(out.category, "frames rule: " + first_line(out.message, run))
    res = wd / "results" / "src"
    frames = sorted((res / "frames").glob("*.png"))
    got = [cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1] for p in frames]
    if [g.shape for g in got] != [e.shape for e in expected]:
        return bad(
            "the frames rule gives other sizes",
            f"frames {got[0].shape[1]}x{got[0].shape[0]}, source shows {w}x{h}",
        )
    frames_diff = max(
        float(np.abs(g.astype(float) - e).mean()) for g, e in zip(got, expected, strict=True)
    )
    r = result_json(
        c.python(READ_SOURCE, str(res / "frames.json"), str(res / "frames"), "src", cwd=wd)
    )
    c.note(f"frames rule: mean |diff| {frames_diff:.2f} to the expected images; reader: {r}")
    frames_txt = f"frames rule ok (diff {frames_diff:.1f})"
    if frames_diff > 6:
        return bad(f"the frames rule's frames differ by {frames_diff:.1f} levels", frames_txt)
    if "error" in r:
        return bad("the source reader refuses the source", r["error"])
    if r["shapes"] != [str((h, w, 3))] or r["dtypes"] != ["uint8"]:
        return bad(f"the source reader gives {r['shapes']} {r['dtypes']}", frames_txt)
    if r["diff"] is None or r["diff"] > 6:
        return bad(f"the source reader's frames differ by {r['diff']:.1f} levels", frames_txt)
    return Outcome("accepted", f"{frames_txt}; reader ok (diff {r['diff']:.1f})")


@case(
    12,
    "gray16_png",
    "6 16-bit grayscale PNGs (96x64): frames rule, then read_source_frames",
    "accepted: both give the 8-bit gray image as RGB",
)
def _gray16(ctx: Ctx, c: Case) -> Outcome:
    import cv2

    folder = c.dir / "src"
    folder.mkdir()
    expected = []
    for i in range(6):
        # the full 16-bit range (low bytes vary); the 8-bit image is its high byte
        g16 = (texture(64, 96, i)[..., 0].astype(np.float64) / 255 * 65535).astype(np.uint16)
        g16 = cv2.GaussianBlur(g16, (5, 5), 0)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), g16)
        g8 = (g16 >> 8).astype(np.uint8)
        expected.append(np.repeat(g8[..., None], 3, axis=2))
    return source_reader_case(ctx, c, folder, expected)


@case(
    13,
    "gray_alpha_png",
    "6 gray+alpha PNGs (96x64, opaque): frames rule, then read_source_frames",
    "accepted: both give the gray image as 3-channel RGB",
)
def _gray_alpha(ctx: Ctx, c: Case) -> Outcome:
    from PIL import Image

    folder = c.dir / "src"
    folder.mkdir()
    expected = []
    for i in range(6):
        g8 = texture(64, 96, i)[..., 0]
        la = np.dstack([g8, np.full_like(g8, 255)])
        Image.fromarray(la).save(folder / f"img{i:03d}.png")
        expected.append(np.repeat(g8[..., None], 3, axis=2))
    return source_reader_case(ctx, c, folder, expected)


@case(
    14,
    "exif_rotated_jpeg",
    "6 JPEGs stored 96x64 with EXIF orientation 6 (shown 64x96): frames, read_source_frames",
    "accepted: both give the upright 64x96 image",
)
def _exif(ctx: Ctx, c: Case) -> Outcome:
    from PIL import Image, ImageOps

    folder = c.dir / "src"
    folder.mkdir()
    expected = []
    for i in range(6):
        path = folder / f"img{i:03d}.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to show
        Image.fromarray(texture(64, 96, i)).save(path, "JPEG", quality=95, exif=exif)
        with Image.open(path) as im:
            expected.append(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    return source_reader_case(ctx, c, folder, expected)


# --------------------------------------------------------------------------- corrupt files


def corrupt(path: Path, how: str = "truncate", keep_time: bool = True) -> None:
    """Damage a file as a full disk or a broken copy would: cut to half, or garbage bytes.
    ``keep_time``: keep its modification time (Snakemake then sees nothing new)."""
    st = path.stat()
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(st.st_size // 2)
    else:
        path.write_bytes(b"this is not what it should be\n" * 4)
    if keep_time:
        os.utime(path, (st.st_atime, st.st_mtime))


def corrupt_case(
    ctx: Ctx, c: Case, base: str, rel: str, target: str, how: str, keep_time: bool
) -> Outcome:
    wd = c.wd(base=base)
    ctx.config(wd)
    corrupt(wd / "results" / SCENE / rel, how, keep_time)
    run = c.snakemake(wd, target, timeout=300)
    if run.rc == 0:
        return bad("exit 0 with a corrupt input", f"exit 0; {summary_text(wd)}")
    out = judge_error(run, [Path(rel).name])
    return Outcome(out.category, first_line(out.message, run))


@case(
    15,
    "corrupt_cameras",
    "cameras.npz cut to half (time kept) after the priors; train",
    "clear error naming cameras.npz and its rule (delete it and rerun)",
)
def _corrupt_cameras(ctx: Ctx, c: Case) -> Outcome:
    target = f"results/{SCENE}/train/last.ckpt"
    return corrupt_case(ctx, c, "priors", "cameras.npz", target, "truncate", True)


@case(
    16,
    "corrupt_ckpt_render",
    "train/last.ckpt cut to half on a finished run; render test",
    "clear error naming last.ckpt and its rule",
)
def _corrupt_ckpt(ctx: Ctx, c: Case) -> Outcome:
    target = f"results/{SCENE}/render/test.mp4"
    return corrupt_case(ctx, c, "trained", "train/last.ckpt", target, "truncate", False)


@case(
    32,
    "corrupt_flow",
    "flow_fw/00003.flo cut to half (time kept) after the priors; train",
    "clear error naming the .flo file and its rule",
)
def _corrupt_flow(ctx: Ctx, c: Case) -> Outcome:
    target = f"results/{SCENE}/train/last.ckpt"
    return corrupt_case(ctx, c, "priors", "flow_fw/00003.flo", target, "truncate", True)


@case(
    33,
    "corrupt_disp",
    "disp/00003.npy overwritten with text (time kept) after the priors; train",
    "clear error naming the .npy file and its rule",
)
def _corrupt_disp(ctx: Ctx, c: Case) -> Outcome:
    target = f"results/{SCENE}/train/last.ckpt"
    return corrupt_case(ctx, c, "priors", "disp/00003.npy", target, "garbage", True)


# --------------------------------------------------------------------------- sizes

PRLIMIT = ["prlimit", f"--as={MEM_LIMIT}", "--"]


def size_case(
    ctx: Ctx,
    c: Case,
    sheet: str,
    target: str,
    needles: list[str],
    startup: bool,
    scene: str,
    base: str | None = None,
) -> Outcome:
    wd = c.wd(base=base)
    ctx.config(wd, sheet=sheet)
    run = c.snakemake(wd, target, timeout=300, prefix=PRLIMIT)
    if run.rc == 0:
        meta_path = wd / "results" / scene / "frames.json"
        size = json.loads(meta_path.read_text())["size"] if meta_path.exists() else "?"
        return bad(f"accepted; frames {size[0]}x{size[1]}", "exit 0")
    out = judge_error(run, needles, startup=startup)
    return Outcome(out.category, first_line(out.message, run))


@case(
    17,
    "images_10000x10",
    "12 images 10000x10, sheet width 160; frames and flow",
    "clear error (frames or start-up) naming the scene and the size",
)
def _thin(ctx: Ctx, c: Case) -> Outcome:
    folder = image_folder(c.dir / "src", 12, 10, 10000)
    sheet = sheet_row("thin", folder, width=160)
    return size_case(ctx, c, sheet, "results/thin/flow_fw", ["scene 'thin'"], False, "thin")


@case(
    18,
    "width_99999999",
    "sheet width 99999999 (96x64 image folder); frames (10 GB address-space limit)",
    "clear error at start-up naming the width",
)
def _huge_width(ctx: Ctx, c: Case) -> Outcome:
    folder = image_folder(c.dir / "src", 6, 64, 96)
    sheet = sheet_row("wide", folder, width=99999999)
    return size_case(ctx, c, sheet, "results/wide/frames.json", ["width"], True, "wide")


@case(
    19,
    "path_hw_100000",
    "camera path paths/big.npz with hw 100000x100000 on a finished run; render path_big",
    "clear error naming big.npz and hw",
)
def _huge_path(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="trained")
    ctx.config(wd)
    cams = np.load(wd / "results" / SCENE / "cameras.npz")
    paths = wd / "results" / SCENE / "paths"
    paths.mkdir()
    np.savez(
        paths / "big.npz",
        c2w=cams["c2w"][:2],
        K=cams["K"],
        hw=np.array([100000, 100000]),
        times=np.array([0.0, 1.0]),
    )
    run = c.snakemake(wd, f"results/{SCENE}/render/path_big.mp4", timeout=300, prefix=PRLIMIT)
    if run.rc == 0:
        return bad("accepted a 100000x100000 camera path", "exit 0")
    out = judge_error(run, ["big.npz"])
    return Outcome(out.category, first_line(out.message, run))


@case(
    20,
    "images_1x1",
    "6 images of 1x1 pixel, default width; frames",
    "clear error naming the scene and the size",
)
def _one_pixel(ctx: Ctx, c: Case) -> Outcome:
    folder = image_folder(c.dir / "src", 6, 1, 1)
    sheet = sheet_row("px", folder)
    return size_case(ctx, c, sheet, "results/px/frames.json", ["scene 'px'"], False, "px")


@case(
    34,
    "num_samples_1e9",
    "train num_samples 10^9 from finished priors; train (10 GB address-space limit)",
    "clear error at start-up naming num_samples",
)
def _num_samples(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="priors")
    ctx.config(wd, {"train_presets": {"tiny": {"num_samples": 10**9}}})
    run = c.snakemake(wd, f"results/{SCENE}/train/last.ckpt", timeout=300, prefix=PRLIMIT)
    if run.rc == 0:
        return bad(
            "accepted",
            f"exit 0; last.ckpt {ckpt_state(wd / 'results' / SCENE / 'train' / 'last.ckpt')}",
        )
    out = judge_error(run, ["num_samples"], startup=True)
    return Outcome(out.category, first_line(out.message, run))


@case(
    35,
    "width_8",
    "synthetic:tiny with sheet width 8 (frames 8 px wide); frames, flow, masks",
    "clear error at start-up naming the scene and the smallest width",
)
def _width8(ctx: Ctx, c: Case) -> Outcome:
    sheet = sheet_row("w8", "synthetic:tiny", width=8)
    needles = ["scene 'w8'", "row 2", "line 2"]
    return size_case(ctx, c, sheet, "results/w8/masks", needles, True, "w8")


# --------------------------------------------------------------------------- sheets


def sheet_case(
    ctx: Ctx, c: Case, sheet: str | bytes, needles: list[str], dry: bool = False
) -> tuple[Outcome, Run]:
    wd = c.wd()
    ctx.config(wd, sheet=sheet)
    run = c.snakemake(wd, *(["-n"] if dry else []), timeout=300)
    c.note(f"jobs started: {jobs_started(run.out)}; results/ exists: {(wd / 'results').exists()}")
    if run.rc == 0:
        return Outcome("accepted", "exit 0"), run
    out = judge_error(run, needles, startup=True)
    return Outcome(out.category, first_line(out.message, run)), run


def name_case(ctx: Ctx, c: Case, name: str) -> Outcome:
    sheet = sheet_row(name, "synthetic:tiny", train_preset="tiny", splits="test")
    out, run = sheet_case(ctx, c, sheet, [f"scene '{name[:40]}", "row 2", "line 2"])
    if run.rc == 0:
        status = summary_row(c.dir / "wd", name).get("status", "no row")
        if status != "ok":
            return bad(f"exit 0, summary.csv says '{status}'", "exit 0")
        return Outcome("accepted", f"exit 0; the whole DAG ran; summary.csv: {status}")
    return out


@case(
    21,
    "scene_name_300",
    "a scene named with 300 characters; default target",
    "clear error at start-up naming the row (limit 100 characters)",
)
def _long_name(ctx: Ctx, c: Case) -> Outcome:
    # not periodic: Snakemake refuses a wildcard value of 20+ repeats for its own reasons
    name = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(5))[:300]
    return name_case(ctx, c, name)


@case(
    22,
    "scene_summary_csv",
    "a scene named summary.csv; default target",
    "clear error at start-up naming the row (reserved name)",
)
def _name_summary(ctx: Ctx, c: Case) -> Outcome:
    return name_case(ctx, c, "summary.csv")


@case(
    23,
    "scene_logs",
    "a scene named logs; default target",
    "clear error at start-up naming the row (reserved name)",
)
def _name_logs(ctx: Ctx, c: Case) -> Outcome:
    return name_case(ctx, c, "logs")


@case(
    24,
    "end_before_start",
    "sheet start 8, end 4 (synthetic:tiny); default target",
    "clear error at start-up naming the row; no job runs",
)
def _end_start(ctx: Ctx, c: Case) -> Outcome:
    sheet = sheet_row("back", "synthetic:tiny", start=8, end=4)
    out, run = sheet_case(ctx, c, sheet, ["scene 'back'", "row 2", "line 2"])
    if run.rc == 0:
        return bad("accepted", "exit 0")
    return out


@case(
    25,
    "sheet_comment_rows",
    "2 comment lines, header, a good row, then stride 'x' on file line 5",
    "clear error naming line 5 of the file",
)
def _comment_rows(ctx: Ctx, c: Case) -> Outcome:
    sheet = (
        "# scenes of the benchmark\n# stride x is wrong on purpose\n"
        "scene\tsource\tstride\ngood\tsynthetic:tiny\t1\nbad\tsynthetic:tiny\tx\n"
    )
    out, run = sheet_case(ctx, c, sheet, ["scenes.tsv"])
    if run.rc == 0:
        return bad("accepted", "exit 0")
    if not out.category.startswith("BAD"):
        rows = re.findall(r"(?:row|line) (\d+)", out.message)
        if rows != ["5"]:
            return bad(
                f"the message says row {', '.join(rows) or '?'}; the row is line 5", out.message
            )
    return out


@case(
    26,
    "sheet_latin1",
    "sheet saved as Latin-1 (a comment with 'é'); default target",
    "clear error naming the file and the encoding (UTF-8)",
)
def _latin1(ctx: Ctx, c: Case) -> Outcome:
    text = "# caméra\n" + SHEET
    out, run = sheet_case(ctx, c, text.encode("latin-1"), ["scenes.tsv"])
    return bad("accepted", "exit 0") if run.rc == 0 else out


@case(
    27,
    "sheet_utf16",
    "sheet saved as UTF-16 (with BOM); default target",
    "clear error naming the file and the encoding (UTF-8)",
)
def _utf16(ctx: Ctx, c: Case) -> Outcome:
    out, run = sheet_case(ctx, c, SHEET.encode("utf-16"), ["scenes.tsv"])
    return bad("accepted", "exit 0") if run.rc == 0 else out


@case(
    28,
    "sheet_utf8_bom",
    "sheet saved as UTF-8 with BOM; dry run (-n)",
    "accepted: the scene is planned",
)
def _bom(ctx: Ctx, c: Case) -> Outcome:
    out, run = sheet_case(ctx, c, SHEET.encode("utf-8-sig"), ["scenes.tsv"], dry=True)
    if run.rc == 0:
        planned = f"results/{SCENE}/" in run.out
        return out if planned else bad("exit 0 but the scene is not planned", "exit 0")
    return bad("refused a valid UTF-8 sheet", out.message)


# --------------------------------------------------------------------------- operator


@case(
    29,
    "umask_002",
    "synthetic and frames rules under umask 002",
    "accepted: folders 0775, files 0664 (group can read)",
)
def _umask(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd()
    ctx.config(wd, sheet=sheet_row("um", "synthetic:tiny"))
    run = c.snakemake(wd, "results/um/frames.json", timeout=240, umask=0o002)
    if run.rc != 0:
        out = judge_error(run, ["scene 'um'"])
        return Outcome(out.category, "run failed: " + first_line(out.message, run))
    res = wd / "results" / "um"
    paths = ["frames", "frames/00000.png", "frames.json", "source", "source/video.mp4"]
    paths += ["gt/scene.npz", "logs/frames.log"]
    modes = {p: (res / p).stat().st_mode & 0o777 for p in paths}
    c.note("modes: " + ", ".join(f"{p} {m:04o}" for p, m in modes.items()))
    wrong = {p: m for p, m in modes.items() if m != (0o775 if (res / p).is_dir() else 0o664)}
    if wrong:
        listed = ", ".join(f"{p} {m:04o}" for p, m in wrong.items())
        return bad(f"{len(wrong)} of {len(modes)} outputs ignore the umask", listed)
    return Outcome("accepted", "all " + ", ".join(sorted({f"{m:04o}" for m in modes.values()})))


LOCK_DIR = """
import nsff_core, os
print("NSFF_CORE", nsff_core.__file__)
from nsff_core.workflow.gpu_slots import default_lock_dir
print("RESULT", '"' + str(default_lock_dir()) + '"')
"""

LOCK_CLAIM = """
import json, os, nsff_core
print("NSFF_CORE", nsff_core.__file__)
from nsff_core.workflow.gpu_slots import claim_for_job
res = {}
try:
    claim = claim_for_job(1)
    res["devices"] = list(claim.devices)
except Exception as exc:
    res["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
print("RESULT", json.dumps(res))
"""


@case(
    30,
    "gpu_lock_dir_precreated",
    "default GPU lock folder made beforehand, mode 0777, owned by uid 65534; a GPU job claims",
    "the job refuses that folder (clear error) or uses a private one (accepted)",
)
def _lock_dir(ctx: Ctx, c: Case) -> Outcome:
    tmp = c.dir / "tmp"  # TMPDIR: the default lock folder lives under the temp dir
    tmp.mkdir()
    env = ctx.env(
        TMPDIR=str(tmp),
        XDG_RUNTIME_DIR=None,
        NSFF_GPU_DEVICES="0",
        CUDA_VISIBLE_DEVICES=None,
        SLURM_JOB_GPUS=None,
        SLURM_STEP_GPUS=None,
    )
    ldir = Path(result_json(c.python(LOCK_DIR, env=env)))
    if not ldir.resolve().is_relative_to(tmp.resolve()):
        c.note(f"default lock folder {ldir} is outside TMPDIR; precreating it there anyway")
        if not str(ldir).startswith(str(tmp)):
            raise HarnessError(f"default lock folder {ldir} is not under TMPDIR; not touching it")
    ldir.mkdir(parents=True, exist_ok=True)
    ldir.chmod(0o777)
    owner = "this user"
    if os.geteuid() == 0:
        os.chown(ldir, 65534, 65534)
        owner = "uid 65534"
    r = result_json(c.python(LOCK_CLAIM, env=env, timeout=120))
    locks = sorted(p.name for p in ldir.iterdir())
    c.note(f"lock folder {ldir} (owner {owner}, 0777): claim {r}; files there now: {locks}")
    if "error" in r:
        ok = str(ldir) in r["error"] or "lock" in r["error"].lower()
        return Outcome("clear error" if ok else "BAD: the error names no folder", r["error"])
    if locks:
        return bad(f"used a lock folder owned by {owner}, mode 0777", f"claimed {r['devices']}")
    return Outcome("accepted", f"claimed {r['devices']} elsewhere; the folder is untouched")


MAKE_EVIL = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.mkdir, (sys.argv[2],))
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
ck["payload"] = Payload()
torch.save(ck, sys.argv[1])
print("RESULT true")
"""


@case(
    31,
    "no_weights_only_env",
    "last.ckpt given a pickled object that runs os.mkdir; render with "
    "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1",
    "the load refuses the object (nothing runs): clear error naming last.ckpt",
)
def _weights_only(ctx: Ctx, c: Case) -> Outcome:
    wd = c.wd(base="trained")
    ctx.config(wd)
    ckpt = wd / "results" / SCENE / "train" / "last.ckpt"
    marker = c.dir / "payload_ran"
    result_json(c.python(MAKE_EVIL, str(ckpt), str(marker)))
    env = ctx.env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    run = c.snakemake(wd, f"results/{SCENE}/render/test.mp4", timeout=300, env=env)
    ran = marker.exists()
    c.note(f"payload ran: {ran}")
    if ran:
        return bad("the pickled code ran at load", first_line("payload_ran created", run))
    if run.rc == 0:
        return bad("exit 0 with a foreign object in the checkpoint", "exit 0")
    out = judge_error(run, ["last.ckpt"])
    return Outcome(out.category, first_line(out.message, run))


# --------------------------------------------------------------------------- main


def run_case(ctx: Ctx, spec: CaseSpec) -> Outcome:
    c = Case(ctx, spec.num, spec.key)
    t0 = time.monotonic()
    try:
        outcome = spec.fn(ctx, c)
    except HarnessError as exc:
        outcome = Outcome("not run", f"harness: {exc}")
    except Exception as exc:  # a broken case must not stop the others
        with open(c.log, "a") as f:
            f.write(traceback.format_exc())
        outcome = Outcome("not run", f"harness error: {type(exc).__name__}: {exc}")
    with open(c.log, "a") as f:
        f.write(
            f"\n[outcome] {outcome.category} | {outcome.message} ({time.monotonic() - t0:.0f} s)\n"
        )
    if not ctx.keep:
        shutil.rmtree(c.dir, ignore_errors=True)
    return outcome


def cell(text: str, limit: int = 170) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def select(names: str | None) -> list[CaseSpec]:
    specs = sorted(CASES, key=lambda s: s.num)
    if not names:
        return specs
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    chosen = [s for s in specs if str(s.num) in wanted or s.key in wanted]
    unknown = set(wanted) - {str(s.num) for s in chosen} - {s.key for s in chosen}
    if unknown:
        sys.exit(f"unknown case(s) {sorted(unknown)}; --list shows them")
    return chosen


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument(
    "--repo",
    type=Path,
    default=Path(__file__).resolve().parents[1],
    help="checkout under test (default: the one this script is in)",
)
parser.add_argument("--workdir", type=Path, help="work folder (default: a new temp folder)")
parser.add_argument("--cases", help="comma-separated case numbers or names (default: all)")
parser.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1)")
parser.add_argument("--keep", action="store_true", help="keep the case folders")
parser.add_argument(
    "--reuse-bases",
    action="store_true",
    help="reuse (and keep) the shared finished runs of an earlier call with the same --repo",
)
parser.add_argument("--list", action="store_true", help="list the cases and exit")
parser.add_argument("--out", type=Path, help="also write the table to this file")

if __name__ == "__main__":
    args = parser.parse_args()
    specs = select(args.cases)
    if args.list:
        for s in specs:
            print(f"{s.num:3d} {s.key:28s} {s.what}")
        sys.exit(0)
    try:  # the commands run with this interpreter: it must be the workflow's environment
        import snakemake  # noqa: F401
    except ImportError:
        sys.exit(f"{sys.executable} has no snakemake: run this with the workflow's venv")
    repo = args.repo.resolve()
    if not (repo / "Snakefile").is_file():
        sys.exit(f"{repo} has no Snakefile")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="nsff-fault-cases-"))).resolve()
    if workdir.is_relative_to(repo):
        sys.exit("--workdir must be outside the checkout under test")
    ctx = Ctx(repo, workdir, args.keep, args.reuse_bases)
    commit = subprocess.run(
        ["git", "-C", str(repo), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"repo {repo} ({commit or 'no git'}), workdir {workdir}", file=sys.stderr)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {s.num: pool.submit(run_case, ctx, s) for s in specs}
        results = {}
        for s in specs:
            results[s.num] = futures[s.num].result()
            o = results[s.num]
            print(f"case {s.num} {s.key}: {o.category} | {o.message}", file=sys.stderr)
    ctx.cleanup()
    lines = [
        f"Fault cases on `{repo}` ({commit or 'no git'}), {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{time.monotonic() - t0:.0f} s; logs: `{ctx.logdir}`",
        "",
        "| # | case | what was done | good outcome | outcome | message (first line) |",
        "|---|---|---|---|---|---|",
    ]
    for s in specs:
        o = results[s.num]
        row = [str(s.num), s.key, s.what, s.good, o.category, o.message]
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    counts: dict[str, int] = {}
    for o in results.values():
        kind = "BAD" if o.category.startswith("BAD") else o.category
        counts[kind] = counts.get(kind, 0) + 1
    lines += ["", "Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
