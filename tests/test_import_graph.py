"""No import cycle among the modules of ``nsff_core``, and the layering of its packages: the
model library ``nsff_core.model`` imports nothing of ``nsff_core.workflow``, ``nsff_core.priors``
or Snakemake, and the prior networks ``nsff_core.priors.nets`` no prior stage module (of the
weights package, only its registry and its hash checks, which hold no download code).

The graph is read from the source with :mod:`ast`, so imports inside functions (the lazy ones
that keep torch out of the workflow's start-up) count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package at ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported_names(path: Path, package: str) -> set[str]:
    """Every module name a file imports, anywhere in it (relative ones made absolute)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names |= {source} | {f"{source}.{alias.name}" for alias in node.names}
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file, relative or absolute).

    ``from .x import y`` counts as an import of ``x`` and, when ``x.y`` is a module, of ``x.y``.
    """
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = imported_names(path, package)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules, first repeated last), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..sub.a import g\n")
    (pkg / "c.py").write_text("import pkg.sub.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.sub.a"}
    assert graph["pkg.c"] == {"pkg.sub.a"}
    assert set(find_cycle(graph)) == {"pkg.sub.a", "pkg.sub.b"}
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_nsff_core_has_no_import_cycle():
    graph = import_graph(REPO / "nsff_core")
    assert "nsff_core.priors.nets.flow_ops" in graph["nsff_core.priors.nets.raft"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


#: the prior stage modules: one per rule of the priors, the backend registry they share, and
#: the weights package of the rule ``weights`` (its registry, hash checks and fetching)
PRIOR_STAGES = tuple(
    f"nsff_core.priors.{name}"
    for name in (
        "backends",
        "depth",
        "flow",
        "frames",
        "masks",
        "sfm",
        "sfm_masks",
        "weights",
        "weights.fetching",
        "weights.registry",
        "weights.hashing",
    )
)

#: what each package must not import: the model library neither the workflow, the prior
#: stages nor Snakemake; the priors not the workflow (the workflow builds on both); the
#: network code of the priors no prior stage (the stages build on the networks)
FORBIDDEN = {
    "nsff_core.model": ("nsff_core.workflow", "nsff_core.priors", "snakemake"),
    "nsff_core.priors": ("nsff_core.workflow", "snakemake"),
    "nsff_core.priors.nets": ("nsff_core.workflow", "snakemake", *PRIOR_STAGES),
}

#: what a package may import all the same: the networks' loaders check a pretrained file through
#: the weights registry and its hash checks (``hashing.open_verified``), which hold no download
#: code; the package ``nsff_core.priors.weights`` itself and its ``fetching`` stay forbidden
ALLOWED = {
    "nsff_core.priors.nets": (
        "nsff_core.priors.weights.registry",
        "nsff_core.priors.weights.hashing",
    ),
}


def layer_violations(root: Path, package: str = "nsff_core.model") -> list[str]:
    """``module -> forbidden import`` for every module of ``package`` under ``root``."""
    found = []
    for name, path in module_names(root).items():
        if name != package and not name.startswith(package + "."):
            continue
        parent = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in sorted(imported_names(path, parent)):
            if any(target == a or target.startswith(a + ".") for a in ALLOWED.get(package, ())):
                continue
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[package]):
                found.append(f"{name} -> {target}")
    return found


def test_the_layering_check_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "nsff_core"
    for sub in ("model", "workflow"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("def f():\n    from ..workflow import stage\n")
    (pkg / "model" / "b.py").write_text("import snakemake.io\nfrom . import a\n")
    (pkg / "model" / "c.py").write_text("from nsff_core.priors.nets.raft import x\n")
    (pkg / "workflow" / "stage.py").write_text("from nsff_core.model import a\n")
    assert layer_violations(pkg) == [
        "nsff_core.model.a -> nsff_core.workflow",
        "nsff_core.model.a -> nsff_core.workflow.stage",
        "nsff_core.model.b -> snakemake.io",
        "nsff_core.model.c -> nsff_core.priors.nets.raft",
        "nsff_core.model.c -> nsff_core.priors.nets.raft.x",
    ]


def test_the_model_library_imports_no_workflow_priors_or_snakemake():
    """``nsff_core.model`` is the pure model library: nothing in it (lazy imports included)
    imports ``nsff_core.workflow``, ``nsff_core.priors`` or Snakemake."""
    assert "nsff_core.model.system" in module_names(REPO / "nsff_core")
    assert layer_violations(REPO / "nsff_core") == []


def test_the_priors_do_not_import_the_workflow():
    assert "nsff_core.priors.nets.raft" in module_names(REPO / "nsff_core")
    assert layer_violations(REPO / "nsff_core", "nsff_core.priors") == []


def test_the_prior_stage_list_is_complete():
    """Every module of ``nsff_core.priors`` outside ``nets`` is a prior stage of the list, so
    that a new stage module is forbidden to the networks too."""
    modules = module_names(REPO / "nsff_core")
    priors = {
        m
        for m in modules
        if m.startswith("nsff_core.priors.") and not m.startswith("nsff_core.priors.nets")
    }
    assert priors == set(PRIOR_STAGES)


def test_the_prior_networks_import_no_prior_stage(tmp_path):
    pkg = tmp_path / "nsff_core"
    (pkg / "priors" / "nets").mkdir(parents=True)
    (pkg / "priors" / "weights").mkdir()
    for init in (pkg, pkg / "priors", pkg / "priors" / "nets", pkg / "priors" / "weights"):
        (init / "__init__.py").write_text("")
    for module in ("registry", "hashing", "fetching"):
        (pkg / "priors" / "weights" / f"{module}.py").write_text("")
    (pkg / "priors" / "frames.py").write_text("from .nets import a\n")
    (pkg / "priors" / "nets" / "a.py").write_text("def f():\n    from ..frames import cap\n")
    (pkg / "priors" / "nets" / "b.py").write_text("from . import a\nfrom .a import f\n")
    (pkg / "priors" / "nets" / "c.py").write_text(
        "from ..weights.registry import entry\n"
        "def g():\n"
        "    from nsff_core.priors.weights.hashing import open_verified\n"
        "    from ..weights.fetching import fetch\n"
        "    from nsff_core.priors.weights import open_verified\n"
    )
    assert layer_violations(pkg, "nsff_core.priors.nets") == [
        "nsff_core.priors.nets.a -> nsff_core.priors.frames",
        "nsff_core.priors.nets.a -> nsff_core.priors.frames.cap",
        "nsff_core.priors.nets.c -> nsff_core.priors.weights",
        "nsff_core.priors.nets.c -> nsff_core.priors.weights.fetching",
        "nsff_core.priors.nets.c -> nsff_core.priors.weights.fetching.fetch",
        "nsff_core.priors.nets.c -> nsff_core.priors.weights.open_verified",
    ]
    assert layer_violations(REPO / "nsff_core", "nsff_core.priors.nets") == []


#: network code: the download modules of the standard library
NETWORK_MODULES = ("urllib.request", "http.client")


def test_the_weights_modules_of_the_networks_hold_no_network_code():
    """The weights modules the networks may import (and the package, which runs first) import
    neither ``urllib`` nor ``http``, anywhere in the file; ``fetching`` does."""
    weights = REPO / "nsff_core" / "priors" / "weights"
    package = "nsff_core.priors.weights"
    for path in (weights / "__init__.py", weights / "registry.py", weights / "hashing.py"):
        names = imported_names(path, package)
        assert not [n for n in names if n.split(".")[0] in ("urllib", "http")], path
    assert set(NETWORK_MODULES) <= imported_names(weights / "fetching.py", package)


def test_importing_the_prior_networks_loads_no_download_code():
    """Importing ``nsff_core.priors.nets``, the weights modules its loaders import (lazily,
    inside functions) and then every module of it loads no module of the rule ``weights``'s
    fetching; until torch is imported (it loads ``urllib.request`` itself, for torch hub),
    neither ``urllib.request`` nor ``http.client`` is loaded."""
    graph = import_graph(REPO / "nsff_core")
    nets = sorted(m for m in graph if m.startswith("nsff_core.priors.nets"))
    used = sorted({t for m in nets for t in graph[m] if t.startswith("nsff_core.priors.weights")})
    assert used == ["nsff_core.priors.weights.hashing"], used  # open_verified, lazily
    watched = [*NETWORK_MODULES, "torch", "nsff_core.priors.weights.fetching"]
    code = (
        "import importlib, json, sys\n"
        f"watched = {watched!r}\n"
        "def loaded():\n"
        "    return sorted(m for m in watched if m in sys.modules)\n"
        "import nsff_core.priors.nets\n"
        f"for m in {used!r}:\n"
        "    importlib.import_module(m)\n"
        "first = loaded()\n"
        f"for m in {nets!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps([first, loaded()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    first, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == [], first
    assert "nsff_core.priors.weights.fetching" not in after, after


def test_importing_the_model_loads_no_snakemake():
    code = (
        "import sys\n"
        "import nsff_core.model.render, nsff_core.model.system\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'snakemake'"
        " or m.startswith(('nsff_core.workflow', 'nsff_core.priors')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
