"""README examples that run, as far as their imports: every ``from tfseg... import`` / ``import tfseg...``
line of README.md's Python blocks (and every ``tfseg_lite`` one of export/README.md) imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\s*$")
IMPORT = re.compile(r"^\s*(from\s+{pkg}(\.\w+)*\s+import\s|import\s+{pkg}(\.\w+)*\b)")


def import_lines(readme: Path, package: str) -> list[tuple[int, str]]:
    """(line number, statement) of each import of ``package`` in the Python code blocks of ``readme``.

    A statement continued over several lines (parentheses, backslash) is joined from all of them.
    """
    pattern = re.compile(IMPORT.pattern.format(pkg=re.escape(package)))
    lines = readme.read_text().splitlines()
    found, language, i = [], None, 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            language = None if language is not None else fence.group(1) or "text"
        elif language in ("python", "py", "pycon") and pattern.match(lines[i].removeprefix(">>> ")):
            start, statement = i, lines[i].removeprefix(">>> ")
            while not _complete(statement) and i + 1 < len(lines):
                i += 1
                statement = statement.rstrip("\\") + "\n" + lines[i].removeprefix("... ")
            found.append((start + 1, statement.split(";")[0].strip()))
        i += 1
    return found


def _complete(statement: str) -> bool:
    try:
        ast.parse(statement.split(";")[0].strip())
        return True
    except SyntaxError:
        return False


def _check(readme: Path, line: int, statement: str):
    where = f"{readme.relative_to(ROOT)}:{line}: {statement}"
    try:
        tree = ast.parse(statement)
    except SyntaxError as error:
        pytest.fail(f"{where}\n  is not a Python statement: {error}")
    assert all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in tree.body), where
    namespace = {}
    try:
        exec(compile(tree, where, "exec"), namespace)
    except Exception as error:  # noqa: BLE001 -- any failure is the README's to report
        pytest.fail(f"{where}\n  fails: {type(error).__name__}: {error}")
    return where, _bound_names(tree), namespace


def _bound_names(tree) -> set[str]:
    """The names an import statement binds (``import a.b`` binds ``a``)."""
    return {alias.asname or alias.name.split(".")[0] for node in tree.body for alias in node.names}


README = ROOT / "README.md"
LITE_README = ROOT / "export" / "README.md"
TFSEG_IMPORTS = import_lines(README, "tfseg")
LITE_IMPORTS = import_lines(LITE_README, "tfseg_lite")


def test_the_reader_finds_the_imports():
    statements = [statement for _, statement in TFSEG_IMPORTS]
    assert len(statements) >= 8, statements
    assert "from tfseg.prune import prune_filters, prune_magnitude, pruning_callbacks, strip" in statements
    assert any(statement.startswith("from tfseg_lite import") for _, statement in LITE_IMPORTS), LITE_IMPORTS


def test_the_reader_joins_multi_line_imports(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "```python\nfrom tfseg.distill import (\n    Distiller,\n    PixelKD,\n)\nx = 1; import tfseg.models\n"
        "import tfseg.data, tfseg.models; y = 2\n```\n\n```bash\nfrom tfseg import nothing\n```\n"
        "from tfseg import prose\n"
    )
    assert import_lines(readme, "tfseg") == [
        (2, "from tfseg.distill import (\n    Distiller,\n    PixelKD,\n)"),
        (7, "import tfseg.data, tfseg.models"),
    ]


@pytest.mark.parametrize(("line", "statement"), TFSEG_IMPORTS, ids=[f"README.md:{line}" for line, _ in TFSEG_IMPORTS])
def test_readme_import(line, statement):
    where, names, namespace = _check(README, line, statement)
    assert names and names <= set(namespace), where


@pytest.mark.parametrize(("line", "statement"), LITE_IMPORTS, ids=[f"export/README.md:{line}" for line, _ in LITE_IMPORTS])
def test_device_runner_readme_import(line, statement):
    where, names, namespace = _check(LITE_README, line, statement)
    assert names and names <= set(namespace), where
