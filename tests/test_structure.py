"""The package's shape: the curated top level, no import cycles, no unexplained function-local imports.

``python tests/test_structure.py`` prints the import graph's cycles and every function-local import
with its verdict (allowed and why, or why not).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfseg"


# --------------------------------------------------------------------------------------------
# The curated top level
# --------------------------------------------------------------------------------------------


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_import_tfseg_loads_no_tensorflow_and_reaches_subpackages_lazily():
    result = _run_python(
        """
        import sys
        import tfseg
        names = dir(tfseg), tfseg.__all__, tfseg.__version__
        heavy = sorted(m for m in ("tensorflow", "tf_keras", "keras", "numpy") if m in sys.modules)
        assert not heavy, f"import tfseg loaded {heavy}"
        eager = sorted(m for m in sys.modules if m.startswith("tfseg."))
        assert not eager, f"import tfseg imported {eager}"
        assert callable(tfseg.models.build)   # the AttributeError this top level fixes
        assert "tensorflow" in sys.modules
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_cli_start_up_loads_no_tensorflow():
    # The reason function-local imports in tfseg/cli.py are allowed (see ALLOWED below).
    result = _run_python(
        """
        import sys
        import tfseg.cli
        assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tfseg"))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _existing_submodules():
    import tfseg

    return [name for name in tfseg._SUBMODULES if importlib.util.find_spec(f"tfseg.{name}") is not None]


def test_curated_names_are_the_objects_of_their_modules():
    import tfseg

    for name, module in tfseg._EXPORTS.items():
        assert getattr(tfseg, name) is getattr(importlib.import_module(module), name), name
    namespace = {}
    exec(f"from tfseg import {', '.join(tfseg._EXPORTS)}", namespace)
    assert {name: namespace[name] for name in tfseg._EXPORTS} == {name: getattr(tfseg, name) for name in tfseg._EXPORTS}


def test_subpackages_are_attributes():
    import tfseg

    for name in _existing_submodules():
        assert getattr(tfseg, name) is sys.modules[f"tfseg.{name}"], name


def test_no_curated_name_is_also_a_module():
    # Importing tfseg.<name> sets the package attribute <name> to the module, so a curated object of the
    # same name (say the function evaluate) would be replaced depending on import order.
    import tfseg

    modules = {path.stem for path in PACKAGE.glob("*.py")} | {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert not modules & set(tfseg._EXPORTS)
    assert not set(tfseg._SUBMODULES) & set(tfseg._EXPORTS)


def test_all_dir_and_star_import():
    import tfseg

    assert set(tfseg.__all__) == set(tfseg._EXPORTS) | set(_existing_submodules()) | {"__version__"}
    assert set(tfseg.__all__) <= set(dir(tfseg))
    namespace = {}
    exec("from tfseg import *", namespace)
    assert set(tfseg.__all__) <= set(namespace)


def test_unknown_name_is_a_clear_attribute_error():
    import tfseg

    with pytest.raises(AttributeError, match="has no attribute 'Distillr'.*Distiller"):
        tfseg.Distillr  # noqa: B018
    assert not hasattr(tfseg, "no_such_module")
    with pytest.raises(ImportError):
        exec("from tfseg import no_such_name", {})


# --------------------------------------------------------------------------------------------
# Reading the imports of tfseg/**/*.py
# --------------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


@dataclass(frozen=True)
class Import:
    """One import statement: where it is, what it names, and the function it sits in (None: module level)."""

    path: Path
    line: int
    module: str  # the module of `import X` / `from X import ...`, relative imports resolved
    names: tuple  # the names after `from X import`; () for `import X`
    function: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(module: str | None, level: int, importer: Path) -> str:
    if not level:
        return module or ""
    package = module_name(importer).split(".")
    if not _is_package(importer):
        package = package[:-1]
    package = package[: len(package) - (level - 1)]
    return ".".join(package + ([module] if module else []))


def read_imports(path: Path) -> list[Import]:
    """Every import statement of ``path``, except those under ``if TYPE_CHECKING:`` (never executed)."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit_one(stmt, function)
                continue
            visit_one(child, function)

    def visit_one(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            visit(node, f"{function}.{node.name}" if function else node.name)
        elif isinstance(node, ast.Lambda):
            visit(node, f"{function}.<lambda>" if function else "<lambda>")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, alias.name, (), function, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, path)
            found.append(Import(path, node.lineno, module, tuple(a.name for a in node.names), function, ast.unparse(node)))
        else:
            visit(node, function)  # class bodies, if/try/with blocks run at import time

    visit(ast.parse(path.read_text(), str(path)), None)
    return found


def tfseg_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / "tfseg").rglob("*.py"))}


def _targets(imp: Import, modules) -> list[str]:
    """The tfseg modules an import statement executes by name (before the package rule below)."""
    if imp.module != "tfseg" and not imp.module.startswith("tfseg."):
        return []
    if not imp.names:  # import tfseg.a.b
        return [imp.module] if imp.module in modules else []
    targets = []
    for name in imp.names:
        sub = f"{imp.module}.{name}"
        targets.append(sub if sub in modules else imp.module)
    return [t for t in dict.fromkeys(targets) if t in modules]


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def edges_of(importer: str, imp: Import, modules) -> dict[str, str]:
    """target module -> why, for one import statement of ``importer`` (the rule of ``test_no_import_cycles``)."""
    edges = {}
    for target in _targets(imp, modules):
        if target != importer:
            edges.setdefault(target, f"{imp.where}: {imp.text}")
        for package in _ancestors(target):
            if package in modules and not _inside(importer, package):
                edges.setdefault(package, f"{imp.where}: {imp.text}  (runs {package}'s __init__ first)")
    return edges


def import_graph(modules=None) -> dict[str, dict[str, str]]:
    """module -> {module it imports at module level -> the statement}, over tfseg."""
    modules = modules or tfseg_files()
    graph = {name: {} for name in modules}
    for name, path in modules.items():
        for imp in read_imports(path):
            if imp.function is None:
                for target, why in edges_of(name, imp, modules).items():
                    graph[name].setdefault(target, why)
    return graph


def strongly_connected(graph: dict[str, dict]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in reverse topological order."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(graph[succ])))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _shortest_path(graph, start, goal, within) -> list[str] | None:
    paths, seen = [[start]], {start}
    while paths:
        next_paths = []
        for path in paths:
            for succ in graph[path[-1]]:
                if succ == goal:
                    return path + [goal]
                if succ in within and succ not in seen:
                    seen.add(succ)
                    next_paths.append(path + [succ])
        paths = next_paths
    return None


def cycles(graph) -> list[tuple[list[str], list[str]]]:
    """(modules of each cycle, one shortest cycle through its first module with the statements)."""
    found = []
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        start = component[0]
        loop = _shortest_path(graph, start, start, set(component))
        steps = [f"{a} -> {b}   [{graph[a][b]}]" for a, b in zip(loop, loop[1:])]
        found.append((component, steps))
    return sorted(found)


def test_no_import_cycles():
    """No cycle among the module-level imports of tfseg.

    Edges: every import statement a module executes when it is imported: at module level, also in
    class bodies and if/try blocks, but not under ``if TYPE_CHECKING:`` and not inside functions
    (those run later; they are audited by ``test_function_local_imports_are_explained``).
    ``from tfseg.x import y`` is an edge to the module tfseg.x.y when that exists, else to tfseg.x;
    ``import tfseg.x.y`` to tfseg.x.y; relative imports are resolved.

    The package rule: importing tfseg.pkg.sub first runs ``tfseg/pkg/__init__.py`` (and tfseg's), so an
    edge to tfseg.pkg.sub is also an edge to each enclosing package -- except the packages that
    enclose the importer itself: those have already started when the importer runs (Python imports a
    module's parents first) and are not run again, so ``tfseg/pkg/__init__.py`` importing
    ``tfseg.pkg.a``, which imports its sibling ``tfseg.pkg.b``, is no cycle. Naming the package
    itself (``from tfseg.pkg import Name`` in tfseg.pkg.a) is an edge to the package's __init__ all
    the same: it needs that init to have got as far as binding ``Name``, and while the init is still
    importing tfseg.pkg.a it has not -- a real cycle, which works or fails by import order.
    """
    found = cycles(import_graph())
    report = "\n\n".join(f"cycle among {', '.join(component)}:\n    " + "\n    ".join(steps) for component, steps in found)
    assert not found, f"{len(found)} import cycle(s) in tfseg:\n{report}"


# The algorithms and the layers below them: model-to-model functions that know nothing of run
# directories or stages (DESIGN.md, "Algorithms apart from pipelines").
ALGORITHMS = ("tfseg.distill", "tfseg.prune", "tfseg.quantize", "tfseg.export", "tfseg.models", "tfseg.data",
              "tfseg.losses", "tfseg.metrics", "tfseg.evaluate", "tfseg.predictors", "tfseg.calibrate",
              "tfseg.train", "tfseg.tflite")
PIPELINE = ("tfseg.pipeline", "tfseg.runs", "tfseg.cli")


def test_algorithms_import_nothing_from_the_pipeline():
    """Also through function-local imports: an algorithm never reaches for a run or a stage."""
    graph = import_graph_all_at_top()
    wrong = [f"{module} -> {target}" for module, targets in graph.items()
             if any(_inside(module, package) for package in ALGORITHMS)
             for target in targets if any(_inside(target, package) for package in PIPELINE)]
    assert not wrong, "algorithm modules import pipeline modules:\n" + "\n".join(wrong)


def test_cycle_rule_on_known_shapes(tmp_path, monkeypatch):
    files = {
        "tfseg/__init__.py": "",
        "tfseg/pkg/__init__.py": "from tfseg.pkg.a import A\n",
        "tfseg/pkg/a.py": "from tfseg.pkg.b import B\nA = B\n",  # a sibling, while pkg's init runs: fine
        "tfseg/pkg/b.py": "B = 1\n",
        "tfseg/x.py": "from tfseg.pkg.a import A\n",  # runs pkg's __init__ first
        "tfseg/y.py": "import typing\nif typing.TYPE_CHECKING:\n    from tfseg.x import A\ndef f():\n    from tfseg.x import A\n",
        "tfseg/cyc/__init__.py": "from tfseg.cyc.m import M\nN = 1\n",
        "tfseg/cyc/m.py": "from tfseg.cyc import N\nM = N\n",  # needs the half-run init: a cycle
        "tfseg/p.py": "from tfseg import q\n",
        "tfseg/q.py": "class C:\n    from tfseg.p import *\n",  # class bodies run at import time
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    graph = import_graph(tfseg_files())
    assert set(graph["tfseg.x"]) == {"tfseg.pkg.a", "tfseg.pkg"}
    assert set(graph["tfseg.pkg.a"]) == {"tfseg.pkg.b"}
    assert graph["tfseg.y"] == {}
    assert [component for component, _ in cycles(graph)] == [["tfseg.cyc", "tfseg.cyc.m"], ["tfseg.p", "tfseg.q"]]


# --------------------------------------------------------------------------------------------
# Function-local imports
# --------------------------------------------------------------------------------------------

START_UP = "keep `import tfseg` and the tfseg command's start-up free of TensorFlow"

# (file, imported module or package prefix) -> why it is imported inside a function.
# Not here on purpose: imports that only dodge an import cycle (they go when the cycle goes), and
# imports with no reason to be late (stdlib, a tfseg module that does not import the importer).
ALLOWED = {
    ("tfseg/cli.py", "tfseg"): START_UP + ": each command imports its stage when it runs",
    ("tfseg/_tfmot.py", "tensorflow_model_optimization"): "TF-MOT: slow, sets TF_USE_LEGACY_KERAS; imported on first use, with an install hint",
    ("tfseg/_tfmot.py", "tfseg._keras"): "part of TF-MOT's lazy import: picks tfseg's Keras right before TF-MOT is imported",
    ("tfseg/models/pretrained.py", "h5py"): "optional runtime, only for keras-applications weight files",
    ("tfseg/report.py", "matplotlib"): "heavy optional runtime, only for figures",
    ("tfseg/tflite.py", "ai_edge_litert"): "optional runtime (LiteRT interpreter), with an install hint",
    ("tfseg/pipeline/summary.py", "tfseg_lite"): "optional runtime: the device runner (export/), a package of its own",
}


def allowed_reason(imp: Import) -> str | None:
    path = str(imp.path.relative_to(ROOT))
    for (file, prefix), reason in ALLOWED.items():
        if file == path and _inside(imp.module, prefix):
            return reason
    return None


def import_graph_all_at_top(modules=None) -> dict[str, dict[str, str]]:
    """``import_graph`` as if every function-local import were at module level: its cycles are the
    ones that function-local imports keep apart."""
    modules = modules or tfseg_files()
    graph = import_graph(modules)
    for name, path in modules.items():
        for imp in read_imports(path):
            if imp.function is not None:
                for target, why in edges_of(name, imp, modules).items():
                    graph[name].setdefault(target, f"{why}  (in {imp.function}())")
    return graph


def function_local_imports() -> list[tuple[Import, str | None, str]]:
    """(import, allowed reason or None, verdict) for every import inside a function body in tfseg/.

    The verdict of an import that is not allowed says whether it dodges a cycle: whether what it
    imports leads back to the importer once every import is at module level.
    """
    modules = tfseg_files()
    graph = import_graph_all_at_top(modules)
    rows = []
    for name, path in modules.items():
        for imp in read_imports(path):
            if imp.function is None:
                continue
            reason = allowed_reason(imp)
            if reason:
                verdict = f"allowed: {reason}"
            else:
                edges = edges_of(name, imp, modules)
                loops = [_shortest_path(graph, target, name, set(graph)) for target in edges]
                loops = [loop for loop in loops if loop]
                if loops:
                    verdict = f"cycle-dodging: {name} -(here)-> {' -> '.join(min(loops, key=len))}"
                elif edges:
                    verdict = "no reason: no cycle even with every import at the top; move it there"
                else:
                    verdict = "no reason: not an optional runtime (stdlib or a dependency); move it to the top"
            rows.append((imp, reason, verdict))
    return rows


def test_function_local_imports_are_explained():
    rows = function_local_imports()
    assert rows, "the audit found no function-local import at all: the reader is broken"
    bad = [f"{imp.where} in {imp.function}(): {imp.text}\n      -> {verdict}" for imp, reason, verdict in rows if not reason]
    assert not bad, f"{len(bad)} function-local import(s) without an allowed reason:\n  " + "\n  ".join(bad)


def test_allowlist_has_no_stale_entries():
    imports = [imp for imp, reason, _ in function_local_imports() if reason]
    stale = [
        (file, prefix)
        for file, prefix in ALLOWED
        if not any(str(imp.path.relative_to(ROOT)) == file and _inside(imp.module, prefix) for imp in imports)
    ]
    assert not stale, f"allowlist entries that no function-local import needs any more: {stale}"


if __name__ == "__main__":
    if len(sys.argv) > 1:  # another checkout, e.g. `git archive HEAD tfseg | tar -x -C /tmp/head`
        ROOT = Path(sys.argv[1]).resolve()
    found = cycles(import_graph())
    print(f"{len(found)} import cycle(s)")
    for component, steps in found:
        print(f"  cycle among {', '.join(component)}:\n      " + "\n      ".join(steps))
    latent = [c for c in cycles(import_graph_all_at_top()) if c not in found]
    print(f"\n{len(latent)} more cycle(s) if every function-local import were at module level")
    for component, steps in latent:
        print(f"  cycle among {', '.join(component)}:\n      " + "\n      ".join(steps))
    rows = function_local_imports()
    print(f"\n{len(rows)} function-local import(s)")
    for imp, _, verdict in rows:
        print(f"  {imp.where:38s} {imp.function}(): {imp.text}\n      -> {verdict}")
    kinds = {}
    for _, _, verdict in rows:
        kind = "start-up" if START_UP in verdict else verdict.split(":")[0] if not verdict.startswith("allowed") else "optional runtime"
        kinds[kind] = kinds.get(kind, 0) + 1
    print("\n" + ", ".join(f"{kind}: {count}" for kind, count in kinds.items()))
