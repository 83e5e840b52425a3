"""Dependencies point one way: cli -> nas -> latmodel. The latency toolkit (latmodel) never
imports the NAS engine or the command line, and the NAS engine never imports the command
line; every import counts, those inside functions too (read with `ast`, nothing is run)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the packages it must never import
FORBIDDEN = {"latmodel": ("nas", "cli"), "nas": ("cli",)}


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved in `package`)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["autovit", package][:max(0, 3 - node.level)] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imported_modules(path, package)):
            for other in FORBIDDEN[package]:
                if name == f"autovit.{other}" or name.startswith(f"autovit.{other}."):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    assert violations(package) == []


def test_the_reader_sees_imports_inside_functions(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from autovit.nas.builder import build_model\n    import autovit.cli.common\n")
    assert {"autovit.nas.builder", "autovit.cli.common"} <= imported_modules(p, "latmodel")
