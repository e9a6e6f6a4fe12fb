"""The layers keep to their direction: product code never imports the simulator.

The simulator and the benchmarks use the product, not the reverse; the command line
(``src/customer_lifecycle/cli.py``) is the composition root and may import both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("features", "training", "serving", "scoring")
SIMULATOR = "customer_lifecycle.simulator"


def simulator_imports(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of the simulator in ``source``, lazy ones too."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "customer_lifecycle":  # `from customer_lifecycle import simulator`
                modules = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [
            (node.lineno, m) for m in modules if m == SIMULATOR or m.startswith(f"{SIMULATOR}.")
        ]
    return found


@pytest.mark.parametrize(
    ("source", "hits"),
    [
        ("import customer_lifecycle.simulator.oracle", 1),  # plain import
        ("from customer_lifecycle.simulator.config import load_scenario", 1),  # from-import
        ("from customer_lifecycle import simulator", 1),  # the package as a name
        ("def f():\n    from customer_lifecycle.simulator import posterior\n", 1),  # lazy
        ("from customer_lifecycle.features import engine", 0),  # another subpackage
        ("import customer_lifecycle.simulators_elsewhere", 0),  # a prefix is not enough
    ],
)
def test_the_scan_finds_simulator_imports(source: str, hits: int) -> None:
    assert len(simulator_imports(source)) == hits


@pytest.mark.parametrize("folder", PRODUCT)
def test_product_code_never_imports_the_simulator(folder: str) -> None:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {module}"
        for path in files
        for line, module in simulator_imports(path.read_text())
    ]
    assert offenders == []
