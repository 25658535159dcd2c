"""The package's shape, checked in every test run so that it cannot rot silently.

* the import-linter contracts in ``pyproject.toml`` (layers ``data_tools`` <- ``discovery`` <-
  ``app``; ``discovery``'s stages in the order a scan meets them; no UI or model code where it
  does not belong) are kept, and they do catch an upward import added on purpose;
* no import cycle between modules (a layers contract cannot see one inside a layer), and the
  check does catch a cycle added on purpose;
* no underscore name imported from another module of the project;
* no library module over 800 lines, no library function over 80 lines.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_tools", "discovery", "app")
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80


def _library_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(exe), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _copy_tree(dst: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def _add_import(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}  # added on purpose by the test\n")


def test_import_contracts_are_kept():
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("discovery/align/metrics.py", "import discovery.regions.offmask", "stages import only"),
    ("discovery/model/rois.py", "from discovery.store import tables", "stages import only"),
    ("discovery/report/html.py", "import discovery.batch.score", "stages import only"),
    ("data_tools/volume.py", "import discovery.schema", "never the other way"),
    ("discovery/regions/offmask.py", "import streamlit", "no UI"),
    ("data_tools/nifti.py", "import torch", "never imports torch"),
])
def test_the_contracts_catch_an_import_added_on_purpose(tmp_path, module, line, broken):
    root = _copy_tree(tmp_path)
    _add_import(root / module, line)
    run = _lint_imports(root)
    assert run.returncode != 0, f"{line!r} in {module} was not caught:\n{run.stdout[-3000:]}"
    broken_lines = [ln for ln in run.stdout.replace("\n", " ").split("BROKEN")[:-1]]
    assert any(broken in ln.rsplit("KEPT", 1)[-1] for ln in broken_lines), run.stdout[-3000:]


def _import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> project modules it imports (module level and inside functions)."""
    modules = {}
    for path in _library_files(root):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t != package:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles():
    assert _cycles(_import_graph(ROOT)) == []


def test_the_cycle_check_catches_a_cycle_added_on_purpose(tmp_path):
    root = _copy_tree(tmp_path)
    _add_import(root / "discovery/report/render.py", "import discovery.report.html")
    cycles = _cycles(_import_graph(root))
    assert any({"discovery.report.html", "discovery.report.render"} <= set(c) for c in cycles)


def _private_imports(root: Path) -> list[str]:
    found = []
    for path in _library_files(root):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                found += [f"{path.relative_to(root)}:{node.lineno} {a.name} from {node.module}"
                          for a in node.names if a.name.startswith("_")
                          and not a.name.startswith("__")]
    return found


def test_no_private_name_is_imported_from_another_module():
    assert _private_imports(ROOT) == []


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for path in _library_files():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} "
                                          f"{node.name} ({n} lines)")
    assert long_modules == []
    assert long_functions == []
