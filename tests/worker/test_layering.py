"""The service's packages import downward only, and the subscriber client stands alone.

Each package of worker/ has a rank (docs/ARCHITECTURE.md); a module may import its own
package and packages of a lower rank, never a higher one, so no import climbs back up and
no two packages need each other. Lazy imports inside functions count too: they still tie
the packages together. kronos_rt_client imports neither worker nor kronos_rt.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. Packages on one line do not import each other.
LAYERS = [
    ["errors"],
    ["contracts"],
    ["calendars"],
    ["adapters"],
    ["quality"],
    ["config"],
    ["pipeline"],
    ["ops"],
    ["lifecycle"],
    ["http"],
    ["app", "view"],
    ["tools"],
    ["cli"],
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "worker" and len(parts) > 1 else None


def _imported(path: Path) -> set[str]:
    """worker.* modules that `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "worker":
                found.update(f"worker.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "worker"}


SOURCES = sorted((ROOT / "worker").rglob("*.py"))


def test_every_worker_package_has_a_rank():
    packages = {p.relative_to(ROOT / "worker").parts[0].removesuffix(".py") for p in SOURCES} - {"__init__"}
    assert packages <= set(RANK), f"give these a layer in {__file__}: {sorted(packages - set(RANK))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downward(path):
    own = path.relative_to(ROOT / "worker").parts[0].removesuffix(".py")
    if own == "__init__":
        return
    upward = [m for m in _imported(path)
              if (pkg := _package_of(m)) and pkg != own and RANK[pkg] >= RANK[own]]
    assert not upward, f"{own} (rank {RANK[own]}) imports {upward}: move the code down or the import up"


def test_every_package_says_what_it_owns_and_may_import():
    for init in sorted((ROOT / "worker").glob("*/__init__.py")) + [ROOT / "kronos_rt_client" / "__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc and "import" in doc, f"{init.relative_to(ROOT)}: open with a docstring that says what it may import"


def test_the_subscriber_client_pulls_in_neither_the_service_nor_the_model():
    code = ("import sys, kronos_rt_client, kronos_rt_client.http_client;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'kronos_rt', 'torch', 'redis'));"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_client_columns_are_the_models():
    from kronos_rt.features import COLUMNS
    from kronos_rt_client.wire import COLUMNS as WIRE_COLUMNS

    assert WIRE_COLUMNS == tuple(COLUMNS)
