"""The distribution ships one import namespace, ``customer_lifecycle``, and nothing else.

The repository keeps its subpackages in top-level folders (``features/``, ``training/``,
...) mapped onto ``customer_lifecycle.*`` by ``pyproject.toml``; these tests build the
real wheel and check that the mapping is complete and that no code imports the folders
by their bare names (which would work from a checkout and break once installed).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import customer_lifecycle

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
#: the folders' bare names, which must never be imported as top-level modules
BARE = {name.rsplit(".", 1)[-1] for name in PACKAGE_DIRS if "." in name} | {"lifecycle"}


def _packages_on_disk() -> set[str]:
    found = set()
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([package, *rel.parts]))
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("customer_lifecycle-*.whl")
    return path


def test_wheel_holds_exactly_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if ".dist-info/" not in name}
    assert top == {"customer_lifecycle"}
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
    if top_level is not None:
        assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["customer_lifecycle"]


def test_wheel_holds_every_module_and_configuration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        prefix = package.replace(".", "/")
        for path in base.rglob("*"):
            if path.suffix in {".py", ".yaml"} and "__pycache__" not in path.parts:
                expected.add(f"{prefix}/{path.relative_to(base).as_posix()}")
    expected.add("customer_lifecycle/py.typed")
    assert expected - names == set()
    assert "customer_lifecycle/features/config/definition.yaml" in names


def test_console_script_points_into_the_namespace(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    (entry,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    assert "lifecycle = customer_lifecycle.cli:app" in zf.read(entry).decode()


def _code_files() -> list[tuple[Path, str]]:
    files: list[tuple[Path, str]] = []
    folders = [ROOT / f for f in PACKAGE_DIRS.values()] + [ROOT / "tests", ROOT / "benchmarks"]
    for folder in folders:
        for path in folder.rglob("*.py"):
            files.append((path, path.read_text()))
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        files.append(
            (notebook, "\n".join(ln for ln in code.splitlines() if not ln.startswith(("%", "!"))))
        )
    return files


def test_no_code_imports_the_folders_by_their_bare_names() -> None:
    offenders = []
    for path, text in _code_files():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {m}"
                for m in modules
                if m.split(".")[0] in BARE
            ]
    assert offenders == []


def test_the_package_is_the_installed_one_not_a_source_folder() -> None:
    # the folders on disk are named features/, training/, ...; customer_lifecycle only
    # exists as the installed package (a wheel or the editable link tree)
    location = Path(customer_lifecycle.__file__).parent
    assert location.name == "customer_lifecycle"
    assert (location / "features" / "engine.py").is_file()
    assert location != ROOT / "src" / "customer_lifecycle"
