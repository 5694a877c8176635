"""The layering of ``common/`` and the boundaries between packages hold, and would be caught if
they broke: import-linter's contracts (pyproject.toml) pass on the tree, fail on a copy with one
bad import, and no module reaches itself through imports (inside functions included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "worker_scrape", "worker_vl", "worker_edit", "worker_score", "worker_train", "worker_generate")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold_on_the_tree() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "bad_import", "broken"), [
    # a lower layer reaching up: the store importing the CLI
    ("common/store/storage.py", "from common.cli import base as _upwards", "common is layered"),
    # production code importing the test kit
    ("common/dataset/export.py", "from common.devkit import samples as _kit", "does not import the devkit"),
    # the library importing a stage package
    ("common/domain/pairing.py", "import worker_vl.service as _worker", "does not import the stage packages"),
    # one stage worker importing another
    ("worker_edit/service.py", "import worker_score.service as _other", "never import each other"),
])
def test_one_bad_import_in_a_copy_breaks_its_contract(tmp_path: Path, module: str, bad_import: str,
                                                      broken: str) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "data", "static",
                                                                                   "templates"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _late() -> None:\n    {bad_import}\n")
    done = _lint(tmp_path)
    assert done.returncode != 0, done.stdout[-3000:]
    broken_part = done.stdout.split("Broken contracts", 1)[1]
    assert broken in broken_part.replace("\n", " ")
    assert module.removesuffix(".py").replace("/", ".") in broken_part  # the culprit is named


def _cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_no_module_imports_itself_back_through_a_cycle() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    # a package's __init__ re-exporting its own modules is not a cycle between concerns
    for module in list(graph.modules):
        for child in list(graph.find_modules_directly_imported_by(module)):
            if child.startswith(module + "."):
                graph.remove_import(importer=module, imported=child)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [{"p.a", "p.b", "p.c"}]
