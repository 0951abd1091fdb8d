"""Layers only point down: an import that goes up the order (or sideways between siblings) fails here.

The order, bottom first (docs/design.md "Layers"):
  distillery -> pipelines | trainer -> compress -> benchmark -> configs -> demo | cluster -> pipelines_kfp | benchmarks
`pipelines_kfp/` (the Kubeflow pipeline) and `benchmarks/` (the speed experiments) sit on top; nothing imports them
but `tests/`, which may import anything but `benchmarks/`.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Package -> layer. A module may import packages of a strictly lower layer, and its own package.
LAYERS = {"distillery": 0, "pipelines": 1, "trainer": 1, "compress": 2, "benchmark": 3, "configs": 4,
          "demo": 5, "cluster": 5, "pipelines_kfp": 6, "benchmarks": 6}


def imported_packages(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every project import in `path`, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in LAYERS]
    return found


def violations(package: str | None, path: pathlib.Path) -> list[str]:
    """Human-readable import violations of one file of `package` (None for tests)."""
    bad = []
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for line, imported in imported_packages(path):
        if package is None:  # tests: anything but the benchmarks
            if imported == "benchmarks":
                bad.append(f"{shown}:{line}: tests import benchmarks/, which nothing imports")
        elif imported != package and LAYERS[imported] >= LAYERS[package]:
            bad.append(f"{shown}:{line}: {package}/ (layer {LAYERS[package]}) imports "
                       f"{imported}/ (layer {LAYERS[imported]}): imports must point down")
    return bad


def test_every_project_import_points_down():
    bad = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            bad += violations(package, path)
    for path in sorted((ROOT / "tests").rglob("*.py")):
        bad += violations(None, path)
    assert not bad, "\n".join(bad)


def test_every_package_directory_has_a_layer():
    """A new top-level package must be placed in the order, or the check above would not see it."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages - {"tests"} <= set(LAYERS), sorted(packages - set(LAYERS))


@pytest.mark.parametrize("source, package, expected", [
    ("from compress import quantize\n", "distillery", 1),        # up
    ("import trainer.loop\n", "pipelines", 1),                   # sideways
    ("def f():\n    from benchmark import report\n", "compress", 1),  # inside a function still counts
    ("from distillery import records\nimport numpy\n", "trainer", 0),
    ("from trainer import loop\n", "trainer", 0),                 # own package
])
def test_the_checker_sees_upward_sideways_and_nested_imports(tmp_path, source, package, expected):
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    assert len(violations(package, path)) == expected
