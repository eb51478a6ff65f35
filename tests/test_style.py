"""The house style, checked: ruff (configured in pyproject.toml) and, by reading the package's
syntax trees, the house rules of CONTRIBUTING.md: no function longer than 80 lines, no private name
imported or reached across modules (private modules such as `_checks` may be imported), and the
backend named "numba" at no more than 2 sites (the backend registry)."""
from __future__ import annotations

import ast
import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deep_ei_jax"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 80
MAX_NUMBA_SITES = 2

# The core modules that issue 13's refactor (another branch) brings under the rules. Remove these
# entries, and the marks they give, once it is merged.


def modules(rule):
    return [pytest.param(path, id=path.relative_to(ROOT).as_posix()) for path in MODULES]


def ruff_command():
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff") or shutil.which("ruff", path=str(pathlib.Path(sys.executable)
                                                                  .parent))
    return [found] if found else None


def test_ruff():
    command = ruff_command()
    if command is None:
        pytest.skip("ruff is not installed (pip install ruff, or the 'test' extra)")
    result = subprocess.run([*command, "check", "deep_ei_jax", "tests", "benchmarks", "examples"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the rules, on syntax trees

def long_functions(source: str) -> list[str]:
    """'name: N lines' for each function (or method) of more than MAX_FUNCTION_LINES lines, from
    its `def` line to its last line."""
    return [f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_module(parts: list[str]) -> bool:
    """Whether the dotted name `parts` is a module or package of this repository."""
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def import_source(module: list[str], is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The absolute dotted name (as parts) a `from ... import` in `module` imports from."""
    if node.level == 0:
        return node.module.split(".")
    package = module if is_package else module[:-1]
    package = package[:len(package) - (node.level - 1)]
    return package + (node.module.split(".") if node.module else [])


def private_reaches(source: str, module: list[str], is_package: bool = False) -> list[str]:
    """Private names of other package modules that `source` (the module `module`) imports
    (`from .api import _resolve`) or reaches as an attribute of an imported module
    (`sweeping._check_measures`). Private modules themselves (`from . import _checks`) are
    allowed."""
    tree = ast.parse(source)
    imported_modules, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            origin = import_source(module, is_package, node)
            if origin[0] != "deep_ei_jax":
                continue
            for alias in node.names:
                if is_module(origin + [alias.name]):
                    imported_modules[alias.asname or alias.name] = origin + [alias.name]
                elif is_private(alias.name):
                    found.append(f"line {node.lineno}: imports {alias.name} from "
                                 f"{'.'.join(origin)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "deep_ei_jax":
                    imported_modules[alias.asname or parts[0]] = \
                        parts if alias.asname else parts[:1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in imported_modules and is_private(node.attr) \
                and not is_module(imported_modules[node.value.id] + [node.attr]):
            found.append(f"line {node.lineno}: reaches {node.value.id}.{node.attr}")
    return sorted(found, key=lambda entry: int(entry.split(":")[0].split()[1]))


def numba_sites(source: str) -> list[int]:
    """Lines of the string constant "numba" (a backend named by a string)."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and node.value == "numba"]


def module_name(path: pathlib.Path) -> tuple[list[str], bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return (parts[:-1], True) if parts[-1] == "__init__" else (parts, False)


def test_the_rule_checks_find_what_they_look_for():
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def short():\n{body[:-12]}\n") == []
    assert long_functions(f"def long():\n{body}\n") == \
        [f"long (line 1): {MAX_FUNCTION_LINES + 1} lines"]
    source = ("from .api import _resolve, resolve_span\n"
              "from .. import sweeping, _checks\n"
              "from .._checks import check_bins\n"
              "import deep_ei_jax.measures as m\n"
              "def f():\n"
              "    sweeping._check_measures(); sweeping.MEASURES; _checks.check_bins\n"
              "    m._prepare; m.__name__; self._x\n")
    assert private_reaches(source, ["deep_ei_jax", "bridge", "tracking"]) == [
        "line 1: imports _resolve from deep_ei_jax.bridge.api",
        "line 6: reaches sweeping._check_measures", "line 7: reaches m._prepare"]
    assert numba_sites('import numba\nMETHODS = ("numba", "xla")\nif m == "numba": pass\n') == \
        [2, 3]


@pytest.mark.parametrize("path", modules("long functions"))
def test_no_function_longer_than_80_lines(path):
    assert long_functions(path.read_text()) == []


@pytest.mark.parametrize("path", modules("private names"))
def test_no_private_name_reached_across_modules(path):
    assert private_reaches(path.read_text(), *module_name(path)) == []


def test_numba_named_at_no_more_than_two_sites():
    sites = [f"{path.relative_to(ROOT)}:{line}" for path in MODULES
             for line in numba_sites(path.read_text())]
    assert len(sites) <= MAX_NUMBA_SITES, sites
