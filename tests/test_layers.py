"""The house in layers, checked on the source: no import cycle between modules or between packages
(imports at any depth, inside functions too), a core that imports nothing that touches the system
or Locust, and no function too long to read at once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("harness", "scenarios", "servers")
# What the pure core may import besides itself: the standard library's pure parts and two libraries.
CORE_MAY_IMPORT = {"__future__", "collections", "dataclasses", "enum", "errno", "hashlib", "ipaddress", "itertools",
                   "math", "random", "re", "ssl", "struct", "typing", "base64", "numpy", "hdrh", "os.path"}
# ...and never these, whatever else changes: they are what the core exists to keep out.
NEVER_IN_CORE = {"locust", "gevent", "socket", "subprocess", "select", "selectors", "psutil", "os", "signal",
                 "scenarios", "servers"}
LONGEST_FUNCTION = 80


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """Every module `name` imports, at any depth, as written (absolute)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: a relative import"
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def project_imports(name: str) -> set[str]:
    found = set()
    for imported in imports_of(name):
        while imported and imported not in MODULES:
            imported = imported.rpartition(".")[0]
        if imported and imported != name and not imported.startswith(name + "."):
            found.add(imported)
    return found


def package_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "harness" and len(parts) > 2 else (name if parts[0] == "harness" else parts[0])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_its_way_back_to_itself():
    graph = {name: project_imports(name) for name in MODULES}
    assert cycles(graph) == []


def test_no_package_reaches_back_to_a_package_that_reaches_it():
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        for imported in project_imports(name):
            if package_of(imported) != package_of(name):
                graph.setdefault(package_of(name), set()).add(package_of(imported))
    assert cycles(graph) == []


def test_the_core_imports_nothing_that_touches_the_system_or_locust():
    for name in (n for n in MODULES if n.startswith("harness.core")):
        for imported in imports_of(name):
            top = imported.split(".")[0]
            if imported.startswith("harness."):
                assert imported.startswith("harness.core"), f"{name} imports {imported}"
                continue
            assert top not in NEVER_IN_CORE and (top in CORE_MAY_IMPORT or imported in CORE_MAY_IMPORT), \
                f"{name} imports {imported}"


def test_no_function_is_too_long_to_read_at_once():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_every_module_says_what_it_owns():
    assert [str(p.relative_to(ROOT)) for p in MODULES.values() if ast.get_docstring(ast.parse(p.read_text())) is None
            and p.stat().st_size] == []


def test_no_module_is_named_after_a_standard_one_or_after_another_of_the_project():
    names = [p.stem for p in MODULES.values() if p.stem != "__init__" and p.stem != "__main__"]
    assert not set(names) & set(sys.stdlib_module_names)
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_every_name_imported_from_the_project_exists():
    """Imports inside functions run only when the function does: each is checked here, in a
    process of its own (Locust's side monkey-patches whatever imports it)."""
    pairs = sorted({(node.module, alias.name) for path in MODULES.values()
                    for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
                    and node.module and node.module.split(".")[0] in PACKAGES for alias in node.names})
    script = ("import importlib, sys\nmissing = []\n"
              f"for module, name in {pairs!r}:\n"
              "    m = importlib.import_module(module)\n"
              "    if not hasattr(m, name):\n"
              "        try:\n"
              "            importlib.import_module(f'{module}.{name}')\n"
              "        except ImportError:\n"
              "            missing.append(f'{module}.{name}')\n"
              "print(missing)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
