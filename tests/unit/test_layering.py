"""The layers read top-down: scoring/ and encoders/ never import streams/ (the record types
they share with it live in scoring/records.py, which streams/records.py re-exports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER = ("scoring", "encoders")
UPPER = "streams"


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module a file under ``root`` imports, anywhere in it (also inside functions
    and ``TYPE_CHECKING`` blocks), as ``(line, absolute dotted name)``."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package, up level - 1
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def test_the_walk_sees_absolute_relative_and_nested_imports(tmp_path) -> None:
    (tmp_path / "scoring" / "sub").mkdir(parents=True)
    f = tmp_path / "scoring" / "sub" / "x.py"
    f.write_text("import streams.app\nfrom . import records\nfrom ..engine import Engine\n"
                 "def g():\n    from streams.records import Item\n")
    assert imported_modules(f, tmp_path) == [
        (1, "streams.app"), (2, "scoring.sub"), (3, "scoring.engine"), (5, "streams.records")]


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_streams(layer: str) -> None:
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in files
        for line, name in imported_modules(path)
        if name == UPPER or name.startswith(UPPER + ".")
    ]
    assert not upward, f"{layer}/ imports {UPPER}/:\n" + "\n".join(upward)
