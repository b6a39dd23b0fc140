"""The package's layers (docs/architecture.rst): no import cycles, nothing imports a module of a
higher layer, nobody imports another module's private names, and benchmarks and examples use the
public API only.

Imports are read from the source (``ast``), function-local ones included, so a cycle hidden in a
function body counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "manifoldtrain"

#: The layers, lowest first. A module may import modules of its own layer or below; the
#: package's root (``manifoldtrain``, its version and its few re-exports) is above them all and
#: reachable from everywhere.
LAYERS = [
    # the base: checks, files, plain data, threads, the registry's mechanism, devices, records, jets
    ["manifoldtrain._validation", "manifoldtrain._io", "manifoldtrain._plain", "manifoldtrain._threads",
     "manifoldtrain._registry", "manifoldtrain._settings", "manifoldtrain.devices", "manifoldtrain.records",
     "manifoldtrain.jet"],
    # geometry and networks, and what needs only them
    ["manifoldtrain.manifold", "manifoldtrain.manifolds", "manifoldtrain.nn", "manifoldtrain.network_jets",
     "manifoldtrain.plotting", "manifoldtrain.distributed", "manifoldtrain.testing"],
    # the data layer
    ["manifoldtrain.data", "manifoldtrain.sources"],
    # losses, metrics and the robustness analysis
    ["manifoldtrain.objectives", "manifoldtrain.evaluation", "manifoldtrain.robustness", "manifoldtrain.baselines"],
    # training and its collaborators
    ["manifoldtrain.checkpoints", "manifoldtrain.selection", "manifoldtrain.feed", "manifoldtrain.training"],
    # names, configs, runs and the command line
    ["manifoldtrain.registry", "manifoldtrain.config", "manifoldtrain.experiment", "manifoldtrain.export",
     "manifoldtrain.demo", "manifoldtrain.robustness.suite", "manifoldtrain.cli", "manifoldtrain.__main__"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    """The layer of ``module``: that of the longest prefix listed."""
    best, layer = -1, None
    for k, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, layer = len(name), k
    if layer is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.rst)")
    return layer


def _imports(module: str, file: Path) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import of the library in ``file``."""
    tree = ast.parse(file.read_text())
    is_package = file.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("manifoldtrain")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("manifoldtrain"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full, None, node.lineno) if full in MODULES else (base, alias.name, node.lineno))
    return out


def _target(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _edges() -> dict[str, set[str]]:
    """Module -> the modules its imports run, the packages above a target included (importing
    ``a.b.c`` runs ``a.b``), except the root and the importer's own packages."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, file in MODULES.items():
        own = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 2)}
        for name, _, _ in _imports(module, file):
            target = _target(name)
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                step = ".".join(parts[:k])
                if step in MODULES and step not in own:
                    edges[module].add(step)
    return edges


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != "manifoldtrain":
            _layer(module)


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, file in MODULES.items():
        if module == "manifoldtrain":
            continue
        for name, _, line in _imports(module, file):
            target = _target(name)
            if target != "manifoldtrain" and _layer(target) > _layer(module):
                upward.append(f"{file.relative_to(ROOT)}:{line}: {module} (layer {_layer(module)}) imports {target} "
                              f"(layer {_layer(target)})")
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_names():
    found = []
    for module, file in MODULES.items():
        for name, imported, line in _imports(module, file):
            if imported is not None and imported.startswith("_") and not imported.startswith("__"):
                found.append(f"{file.relative_to(ROOT)}:{line}: {imported} from {name}")
    assert not found, "private names imported from another module:\n" + "\n".join(found)


@pytest.mark.parametrize("folder", ["benchmarks", "examples"])
def test_scripts_use_the_public_api_only(folder):
    found = []
    for file in sorted((ROOT / folder).glob("*.py")):
        for name, imported, line in _imports(file.stem, file):
            private_module = any(part.startswith("_") for part in name.split(".")[1:])
            if private_module or (imported or "").startswith("_"):
                found.append(f"{file.relative_to(ROOT)}:{line}: {name}{'.' + imported if imported else ''}")
    assert not found, "private names used:\n" + "\n".join(found)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The parser sees function-local and relative imports (the checks above cannot pass by seeing nothing)."""
    file = tmp_path / "mod.py"
    file.write_text("def f():\n    from manifoldtrain.training import _hidden\n    from .jet import Jet\n")
    found = _imports("manifoldtrain.data.fake", file)
    assert ("manifoldtrain.training", "_hidden", 2) in found and ("manifoldtrain.data.jet", "Jet", 3) in found
    assert _layer(_target("manifoldtrain.training")) > _layer("manifoldtrain.data.fake")
