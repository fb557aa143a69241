"""kronos_rt is a library: no Kafka, Redis or worker code in it, no command line, and no
path into worker/ (the service builds on the library, never the other way round)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "kronos_rt"
SOURCES = sorted(PKG.rglob("*.py"))
# Packages of the service side. argparse belongs to command lines, which live in worker/cli;
# torch itself imports it, so it is checked in the sources only, not in sys.modules.
SERVICE = ("aiokafka", "redis", "worker", "prometheus_client")
FORBIDDEN_IMPORTS = SERVICE + ("argparse",)


def _source_param(path: Path):
    return pytest.param(path, id=path.name)


def test_importing_kronos_rt_pulls_no_service_code():
    code = ("import sys, kronos_rt, kronos_rt.naive, kronos_rt.registry, kronos_rt.hub;"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {SERVICE!r}];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _worker_paths(tree: ast.AST) -> list[str]:
    """String constants (not docstrings) that name worker/ as a path or a path component."""
    prose = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            parts = node.value.replace("\\", "/").split("/")
            if "worker" in parts or node.value.startswith("worker."):
                found.append(node.value)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_source_imports_no_service_package_nor_argparse(path):
    bad = _imports(ast.parse(path.read_text())) & set(FORBIDDEN_IMPORTS)
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", [_source_param(p) for p in SOURCES])
def test_source_has_no_path_into_worker(path):
    found = _worker_paths(ast.parse(path.read_text()))
    assert not found, f"{path.name} reaches into worker/: {found}"


def test_the_path_check_sees_a_path_into_worker():
    """The check above would catch the forms such a path takes."""
    code = ('"""Docstrings may mention worker/."""\n'
            'A = Path(__file__).parents[1] / "worker" / "tools"\n'
            'B = "worker/tools/data/x.csv"\n'
            'C = importlib.import_module("worker.config")\n'
            'D = "a worker thread"\n')
    assert sorted(_worker_paths(ast.parse(code))) == ["worker", "worker.config", "worker/tools/data/x.csv"]
