"""The layering rule of docs/architecture.md, checked on the code (AST, no imports run).

- Every module of ``ltray/`` belongs to one layer of :data:`LAYERS`; a module imports only from
  its own layer or the layers below it.
- No import circle between ltray's modules, counting imports inside functions too.
- An import of an ltray module inside a function ("lazy") must buy start-up time: the imported
  module pulls in a heavy library (torch, Ray, MLflow, ...) that the importing module does not
  already load at import time. Any other lazy import needs an entry in :data:`LAZY_ALLOWED`
  saying why.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top; a module's layer is that of its longest listed prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "ltray._version",
            "ltray.errors",
            "ltray.registry",
            "ltray.config",
            "ltray.config_sections",
            "ltray.paths",
            "ltray.storage",
            "ltray.resources",
            "ltray.presets",
        ),
    ),
    (
        "building blocks",
        (
            "ltray.data",
            "ltray.models",
            "ltray.losses",
            "ltray.mixup",
            "ltray.metrics",
            "ltray.plots",
        ),
    ),
    ("post hoc", ("ltray.fusion",)),
    # a finished run: trained, restored as a model, checked, logged to MLflow
    (
        "training",
        ("ltray.train", "ltray.previous", "ltray.inference", "ltray.validate", "ltray.tracking"),
    ),
    ("orchestration", ("ltray.launch", "ltray.tune", "ltray.reproduce", "ltray.spaces")),
    ("commands", ("ltray.cli", "ltray.commands")),
    ("package facade", ("ltray",)),  # `ltray/__init__.py` alone: ltray.load_run, __version__
]

# Libraries whose import costs start-up time: a lazy import that avoids one is allowed.
HEAVY = ("torch", "torchvision", "ray", "mlflow", "optuna", "sklearn", "scipy", "matplotlib")

# Lazy imports of ltray modules that are not about start-up time: (importer, imported) → why.
LAZY_ALLOWED: dict[tuple[str, str], str] = {
    ("ltray", "ltray.tracking.models"): "`import ltray` must stay light: `ltray.load_run` is "
    "the package's one convenience export, resolved on first use (PEP 562 __getattr__)",
    ("ltray.train.driver", "ltray.train.lean"): "lean.py subclasses Ray Train's classes when it "
    "is imported (a module-level call, which this AST view does not see): Ray loads with it",
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    lazy: bool
    line: int
    implicit: bool = False  # a parent package, run by Python before the module imported


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "ltray").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[list[Edge], set[str]]:
    """ltray edges of one module, and the top-level packages it imports at module level."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks are for type checkers only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top_level |= {id(n) for n in ast.walk(node)}
    typing_only = {
        id(n)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    edges, eager_libs = [], set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in typing_only:
            continue
        lazy = id(node) not in top_level
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            # `from ltray.fusion import base` names a submodule; `import X from pkg` the package.
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            if not lazy:
                eager_libs.add(target.split(".")[0])
            if target.startswith("ltray"):
                dst = _resolve(target, modules)
                if dst is not None and dst != name:
                    edges.append(Edge(name, dst, lazy, node.lineno))
                    # Importing a.b.c runs a/__init__ and a/b/__init__ first: the parent
                    # packages that are not this module's own.
                    parts = dst.split(".")
                    for i in range(2, len(parts)):
                        parent = ".".join(parts[:i])
                        if parent in modules and not name.startswith(parent + "."):
                            edges.append(Edge(name, parent, lazy, node.lineno, implicit=True))
                    break
            else:
                break
    return edges, eager_libs


def _graph() -> tuple[dict[str, Path], list[Edge], dict[str, set[str]]]:
    modules = _modules()
    edges, libs = [], {}
    for name, path in modules.items():
        e, lib = _imports(name, path, modules)
        edges += e
        libs[name] = lib
    return modules, edges, libs


def _layer(name: str) -> int:
    best, layer = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            within = name.startswith(p + ".") and p != "ltray"  # the facade is the root alone
            if (name == p or within) and len(p) > best:
                best, layer = len(p), i
    assert layer is not None, f"{name}: in no layer of LAYERS; add it to the right one"
    return layer


def _heavy_closure(edges: list[Edge], libs: dict[str, set[str]]) -> dict[str, set[str]]:
    """The heavy libraries each module loads at import time, through its eager ltray imports."""
    eager = defaultdict(set)
    for e in edges:
        if not e.lazy:
            eager[e.src].add(e.dst)
    memo: dict[str, set[str]] = {}

    def visit(m: str, seen: frozenset[str]) -> set[str]:
        if m in memo:
            return memo[m]
        out = {lib for lib in libs.get(m, set()) if lib in HEAVY}
        for d in eager[m]:
            if d not in seen:
                out |= visit(d, seen | {d})
        memo[m] = out
        return out

    return {m: visit(m, frozenset({m})) for m in libs}


def test_every_module_has_a_layer() -> None:
    for name in _modules():
        _layer(name)


def test_no_module_imports_from_a_layer_above_it() -> None:
    _, edges, _ = _graph()
    upward = [
        f"{e.src}:{e.line} imports {e.dst} ({LAYERS[_layer(e.src)][0]} → "
        f"{LAYERS[_layer(e.dst)][0]})"
        for e in edges
        if _layer(e.dst) > _layer(e.src)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    modules, edges, _ = _graph()
    graph = defaultdict(set)
    for e in edges:
        graph[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in modules:
        if v not in index:
            strong(v)
    assert not circles, "import circles:\n" + "\n".join(" ↔ ".join(c) for c in circles)


def test_lazy_imports_of_ltray_modules_buy_start_up_time() -> None:
    _, edges, libs = _graph()
    heavy = _heavy_closure(edges, libs)
    bad = []
    for e in edges:
        if not e.lazy or e.implicit or (e.src, e.dst) in LAZY_ALLOWED:
            continue
        saves = heavy[e.dst] - heavy[e.src]
        if not saves:
            bad.append(f"{e.src}:{e.line} imports {e.dst} inside a function")
    assert not bad, (
        "lazy imports of ltray modules that save no heavy import (import at the top, or add "
        "them to LAZY_ALLOWED with the reason):\n" + "\n".join(sorted(set(bad)))
    )


# Modules that must import no heavy library when they are imported: the command line parses its
# arguments and validates configs and spaces before torch, Ray or MLflow load (a bad command
# fails in about a second).
LIGHT = ("ltray.cli", "ltray.commands", "ltray.validate", "ltray.config", "ltray.tune.space")


def test_the_command_line_and_validation_load_no_heavy_library() -> None:
    modules, edges, libs = _graph()
    heavy = _heavy_closure(edges, libs)
    loaded = {
        m: sorted(heavy[m])
        for m in modules
        if heavy[m] and any(m == p or m.startswith(p + ".") for p in LIGHT)
    }
    assert not loaded, f"heavy libraries loaded at import time: {loaded}"


def test_the_parser_and_the_light_modules_load_no_heavy_library_when_run() -> None:
    """The same, as Python runs it (a module-level call that imports Ray is invisible to the
    AST view): building every command's parser and importing the light modules loads none."""
    import subprocess
    import sys

    code = (
        "import sys, ltray.cli; ltray.cli.build_parser()\n"
        "import ltray.commands.data, ltray.validate, ltray.config, ltray.tune.space\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


def test_the_rule_catches_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a building block importing the training layer is reported."""
    modules = _modules()
    path = tmp_path / "losses.py"
    path.write_text("from ltray.train.loop import run_training\n")
    edges, _ = _imports("ltray.losses", path, modules)
    assert [(e.src, e.dst) for e in edges if not e.implicit] == [
        ("ltray.losses", "ltray.train.loop")
    ]
    assert _layer("ltray.train.loop") > _layer("ltray.losses")
