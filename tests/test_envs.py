"""The per-rule conda envs (envs/*.yaml): every rule names one, each parses and is pinned, and
each provides every third-party module its rule's script imports.

Imports are collected statically with ``ast``: the script's own, then transitively those of
every ``nsff_core`` module it reaches (absolute and relative imports, ``from pkg import
submodule``, and the package ``__init__``s on the way), including imports inside functions,
since heavy imports are lazy. This over-approximates what a run needs, on purpose: a lazy import
in a branch the test cannot see is still an import the env must be able to satisfy.

Exempt: the standard library (``sys.stdlib_module_names``), imports under ``if TYPE_CHECKING:``,
and optional modules. A module is optional in a file that probes it: imports it inside a ``try``
whose handlers catch ``ImportError`` (or ``ModuleNotFoundError``, ``Exception``, a bare
``except``), or calls ``importlib.util.find_spec("name")``; its other imports in that file are
then taken to run only after the probe succeeded (as ``nsff_core.priors.nets.maskrcnn`` does with
detectron2: ``require_detectron2()`` first, then ``from detectron2 import ...``). A module that
some reached file imports without probing it is required. Rules without a script, shell, notebook
or wrapper (``rule all``, ``rule priors``) need no env.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

LOCAL_PACKAGE = "nsff_core"
#: import name -> acceptable package names (pip or conda-forge); others map to themselves
IMPORT_PACKAGES: dict[str, set[str]] = {
    "cv2": {
        "opencv-python-headless",
        "opencv-python",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
        "opencv",
        "py-opencv",
    },
    "yaml": {"pyyaml"},
    "PIL": {"pillow"},
    "skimage": {"scikit-image"},
    "sklearn": {"scikit-learn"},
    "pytorch_lightning": {"pytorch-lightning", "lightning"},
    "lightning": {"lightning"},
    "imageio_ffmpeg": {"imageio-ffmpeg"},
    "torch": {"torch", "pytorch"},
    "huggingface_hub": {"huggingface-hub"},
}
#: modules the Snakemake script preamble provides inside any env
PROVIDED = {"snakemake", "__future__"}
#: directives that run code, so the rule needs an env
RUNS = ("script", "shell", "notebook", "wrapper")
#: exception names whose handler makes the imports of its ``try`` body optional
GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def normalize(name: str) -> str:
    """PEP 503 normal form of a package name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def packages_for(module: str) -> set[str]:
    return {normalize(p) for p in IMPORT_PACKAGES.get(module, {module})}


# --------------------------------------------------------------------------- rules


def parse_rules(text: str) -> dict[str, dict[str, str]]:
    """Rules of a Snakefile/.smk: name -> {directive: first value line} (quotes stripped)."""
    lines = text.splitlines()
    rules: dict[str, dict[str, str]] = {}
    i = 0
    while i < len(lines):
        m = re.match(r"(?:rule|checkpoint)\s+(\w+)\s*:", lines[i])
        i += 1
        if not m:
            continue
        body = []
        while i < len(lines) and (
            not lines[i].strip() or lines[i][0].isspace() or lines[i].lstrip().startswith("#")
        ):
            body.append(lines[i])
            i += 1
        directives: dict[str, str] = {}
        for k, line in enumerate(body):
            d = re.match(r"(\s+)(\w+):\s*(.*?)\s*$", line)
            if not d or len(d.group(1).expandtabs()) != 4:
                continue
            value = d.group(3)
            if not value:  # the value is on the next non-empty line
                value = next((b.strip() for b in body[k + 1 :] if b.strip()), "")
            directives[d.group(2)] = value.rstrip(",").strip().strip("\"'")
        rules[m.group(1)] = directives
    return rules


def rule_files() -> list[Path]:
    return [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]


def all_rules() -> dict[str, tuple[Path, dict[str, str]]]:
    out = {}
    for path in rule_files():
        for name, directives in parse_rules(path.read_text()).items():
            out[name] = (path, directives)
    return out


def conda_problem(path: Path, directives: dict[str, str]) -> str | None:
    """Why a rule's env declaration is wrong, or None."""
    if not any(r in directives for r in RUNS):
        return None
    env = directives.get("conda")
    if not env:
        return "runs code but has no conda: directive"
    env_path = (path.parent / env).resolve()
    if env_path.suffix != ".yaml" or env_path.parent != (REPO / "envs").resolve():
        return f"conda: {env} is not an envs/*.yaml file"
    if not env_path.is_file():
        return f"conda: {env} does not exist"
    return None


# --------------------------------------------------------------------------- imports


@dataclass
class Imports:
    """Top-level names of the non-local modules a script reaches."""

    required: set[str] = field(default_factory=set)
    optional: set[str] = field(default_factory=set)
    local: set[str] = field(default_factory=set)  # nsff_core modules visited


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(getattr(t, "id", getattr(t, "attr", None)) in GUARDS for t in types)


def _is_type_checking(test: ast.expr) -> bool:
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _local_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def file_imports(path: Path, module: str | None) -> tuple[list[tuple[str, bool]], set[str]]:
    """Absolute names a file imports, each with ``guarded`` (inside a ``try`` that catches
    ImportError), and the top-level names the file probes (guarded or ``find_spec``).

    ``module`` is the file's dotted name (None for a script), for relative imports;
    ``from X import y`` also yields ``X.y`` (y may be a submodule).
    """
    tree = ast.parse(path.read_text(), str(path))
    package = module if module and path.name == "__init__.py" else (module or "").rpartition(".")[0]
    found: list[tuple[str, bool]] = []
    probed: set[str] = set()

    def walk(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)):
            inner = guarded or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                walk(child, inner)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                walk(child, guarded)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                walk(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((base, guarded))
            found.extend((f"{base}.{a.name}", guarded) for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            arg = node.args[0].value
            if isinstance(arg, str) and name == "find_spec":
                probed.add(arg.split(".")[0])
            elif isinstance(arg, str) and name == "import_module" and not arg.startswith("."):
                found.append((arg, guarded))
        for child in ast.iter_child_nodes(node):
            walk(child, guarded)

    walk(tree, False)
    probed |= {name.split(".")[0] for name, guarded in found if guarded}
    return found, probed


def collect_imports(
    script: Path, root: Path = REPO, local: str = LOCAL_PACKAGE, module: str | None = None
) -> Imports:
    """Non-local modules ``script`` imports, directly or through the local package
    (``module``: the dotted name of ``script`` when it is a module of the package)."""
    result = Imports()
    required: set[str] = set()
    optional: set[str] = set()
    queue: list[tuple[Path, str | None]] = [(script, module)]
    seen: set[Path] = set()
    while queue:
        path, module = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        if module:
            result.local.add(module)
        found, probed = file_imports(path, module)
        for name, guarded in found:
            top = name.split(".")[0]
            if top == local:
                parts = name.split(".")
                for k in range(1, len(parts) + 1):  # the package __init__s run first
                    sub = ".".join(parts[:k])
                    f = _local_file(sub, root)
                    if f is not None:
                        queue.append((f, sub))
            elif top in sys.stdlib_module_names or top in PROVIDED or not top:
                continue
            else:
                (optional if guarded or top in probed else required).add(top)
    result.required = required
    result.optional = optional - required
    return result


# --------------------------------------------------------------------------- envs


def _spec_name(spec: str) -> str:
    spec = spec.split("::")[-1].strip()
    if "#egg=" in spec:
        return normalize(spec.split("#egg=")[-1])
    return normalize(re.split(r"[\s=<>!~\[@;]", spec, maxsplit=1)[0])


def env_specs(env: dict) -> tuple[list[str], list[str]]:
    """(conda specs, pip specs) of a parsed env file."""
    conda, pip = [], []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, str):
            conda.append(dep)
        elif isinstance(dep, dict):
            pip.extend(str(p) for p in dep.get("pip") or [])
    return conda, pip


def env_packages(env: dict) -> set[str]:
    conda, pip = env_specs(env)
    return {_spec_name(s) for s in conda + pip}


def missing_modules(imports: Imports, env: dict) -> list[str]:
    """Required modules that no package of ``env`` provides."""
    have = env_packages(env)
    return sorted(m for m in imports.required if not packages_for(m) & have)


def load_env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
RULES = all_rules()
SCRIPT_RULES = sorted(n for n, (_, d) in RULES.items() if "script" in d)


# --------------------------------------------------------------------------- the real envs


def test_the_parser_finds_the_workflow_rules():
    expected = {"synthetic", "frames", "flow", "masks", "sfm", "depth", "train", "render"}
    expected |= {"evaluate", "summary", "weights", "all", "priors"}
    assert expected <= set(RULES), sorted(expected - set(RULES))
    assert RULES["flow"][1]["conda"] == "../envs/flow.yaml"
    assert RULES["flow"][1]["script"] == "../workflow_scripts/flow.py"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_names_an_env(rule):
    path, directives = RULES[rule]
    assert conda_problem(path, directives) is None, (
        f"rule {rule} ({path.name}): {conda_problem(path, directives)}"
    )


def test_aggregate_rules_are_exempt():
    for rule in ("all", "priors"):
        path, directives = RULES[rule]
        assert "conda" not in directives and conda_problem(path, directives) is None


def test_every_env_file_is_used_by_a_rule():
    used = {(p.parent / d["conda"]).resolve() for p, d in RULES.values() if "conda" in d}
    unused = [e.name for e in ENV_FILES if e.resolve() not in used]
    assert not unused, f"env files no rule names: {unused}"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_file_parses_and_is_pinned(env_file):
    env = load_env(env_file)
    assert isinstance(env, dict)
    assert isinstance(env.get("name"), str) and env["name"]
    assert isinstance(env.get("channels"), list) and env["channels"]
    assert isinstance(env.get("dependencies"), list) and env["dependencies"]
    conda, pip = env_specs(env)
    assert any(_spec_name(s) == "python" for s in conda), "no python version"
    if pip:
        assert "pip" in conda, "pip packages without pip itself"
    loose = [s for s in conda if s != "pip" and not re.fullmatch(r"[\w.-]+=[0-9][\w.+*-]*", s)]
    loose += [s for s in pip if not re.fullmatch(r"[\w.-]+(\[[\w,-]+\])?==[0-9][\w.+!-]*", s)]
    assert not loose, f"{env_file.name}: unpinned dependencies {loose}"


def _pins() -> dict[str, dict[str, str]]:
    """package -> {env file: version} over all envs."""
    pins: dict[str, dict[str, str]] = {}
    for f in ENV_FILES:
        conda, pip = env_specs(load_env(f))
        for spec in conda + pip:
            if "=" in spec:
                version = spec.split("=")[-1]
                pins.setdefault(_spec_name(spec), {})[f.name] = version
    return pins


def test_envs_agree_with_each_other_and_pyproject():
    from packaging.requirements import Requirement

    pins = _pins()
    split = {p: v for p, v in pins.items() if len(set(v.values())) > 1}
    assert not split, f"one package, different versions across envs: {split}"
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        for env_name, version in pins.get(normalize(req.name), {}).items():
            assert req.specifier.contains(version, prereleases=True), (
                f"{env_name} pins {req.name} {version}, pyproject asks {req.specifier}"
            )


#: backend modules a rule's script may not import yet (the wiring is separate): their imports
#: must be in the rule's env all the same
BACKEND_MODULES = {
    "flow": ["nsff_core.priors.nets.raft"],
    "masks": ["nsff_core.priors.nets.maskrcnn"],
    "depth": ["nsff_core.priors.nets.dpt"],
}


@pytest.mark.parametrize("rule, module", [(r, m) for r, ms in BACKEND_MODULES.items() for m in ms])
def test_env_covers_the_pretrained_backend_modules(rule, module):
    path = _local_file(module, REPO)
    if path is None:
        pytest.skip(f"{module} does not exist")
    _, directives = RULES[rule]
    imports = collect_imports(path, module=module)
    missing = missing_modules(imports, load_env((REPO / "rules" / directives["conda"]).resolve()))
    assert not missing, f"rule {rule}: env {directives['conda']} lacks {missing} for {module}"


@pytest.mark.parametrize("rule", SCRIPT_RULES)
def test_env_covers_the_imports_of_the_rule_script(rule):
    path, directives = RULES[rule]
    script = (path.parent / directives["script"]).resolve()
    assert script.is_file(), f"rule {rule}: script {script} is missing"
    imports = collect_imports(script)
    assert "nsff_core.workflow.stage" in imports.local  # the walk did follow nsff_core
    env = load_env((path.parent / directives["conda"]).resolve())
    missing = missing_modules(imports, env)
    assert not missing, (
        f"rule {rule}: env {directives['conda']} lacks packages for {missing} "
        f"(imported by {script.name} or the nsff_core modules it reaches; optional, "
        f"not required: {sorted(imports.optional)})"
    )


# --------------------------------------------------------------------------- self-checks


def _toy_package(root: Path) -> Path:
    pkg = root / LOCAL_PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""toy"""\n')
    (pkg / "sub" / "__init__.py").write_text("import yaml\n")
    (pkg / "sub" / "heavy.py").write_text(
        "from __future__ import annotations\n"
        "import json\n"
        "from typing import TYPE_CHECKING\n"
        "from .. import helper\n"
        "if TYPE_CHECKING:\n"
        "    import pandas\n"
        "try:\n"
        "    import detectron2\n"
        "except ImportError:\n"
        "    detectron2 = None\n"
        "def run():\n"
        "    import cv2\n"
        "    from detectron2 import model_zoo\n"
        "    import importlib.util\n"
        "    if importlib.util.find_spec('lpips'):\n"
        "        import lpips\n"
        "    return cv2, lpips\n"
    )
    (pkg / "helper.py").write_text("def f():\n    from PIL import Image\n    return Image\n")
    script = root / "script.py"
    script.write_text("import os\nimport numpy as np\nfrom nsff_core.sub.heavy import run\n")
    return script


def test_import_walk_follows_the_package_and_classifies(tmp_path):
    imports = collect_imports(_toy_package(tmp_path), root=tmp_path)
    assert imports.required == {"numpy", "cv2", "PIL", "yaml"}
    assert imports.optional == {"detectron2", "lpips"}
    assert imports.local == {
        "nsff_core",
        "nsff_core.sub",
        "nsff_core.sub.heavy",
        "nsff_core.helper",
    }


def test_check_fails_for_an_env_missing_a_module(tmp_path):
    imports = collect_imports(_toy_package(tmp_path), root=tmp_path)
    env = yaml.safe_load(
        "name: toy\nchannels: [conda-forge]\n"
        "dependencies: [python=3.11, numpy=2.4.6, pip, {pip: [pillow==13.0.0, pyyaml==6.0.4]}]\n"
    )
    assert missing_modules(imports, env) == ["cv2"]
    env["dependencies"][-1]["pip"].append("opencv-python-headless==5.0.0.93")
    assert missing_modules(imports, env) == []


def test_check_fails_for_a_rule_without_env(tmp_path):
    text = (
        "rule a:\n    output:\n        'x'\n    conda:\n        '../envs/nope.yaml'\n"
        "    script:\n        '../s.py'\n\n\n"
        "rule b:\n    output:\n        'y'\n    shell:\n        'touch {output}'\n\n\n"
        "rule c:\n    input:\n        'x',\n"
    )
    rules = parse_rules(text)
    assert set(rules) == {"a", "b", "c"}
    smk = REPO / "rules" / "toy.smk"  # only its folder is used, to resolve ../envs
    assert "does not exist" in conda_problem(smk, rules["a"])
    assert "no conda" in conda_problem(smk, rules["b"])
    assert conda_problem(smk, rules["c"]) is None
