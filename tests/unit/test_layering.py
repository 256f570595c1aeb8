"""The layers read top-down: scoring/ and encoders/ never import streams/ (the record types
they share with it live in scoring/records.py, which streams/records.py re-exports); and
everything imports them as ``recstream.<folder>``, never by the folder's generic name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER = ("scoring", "encoders")
UPPER = "recstream.streams"
FOLDERS = ("streams", "scoring", "encoders")


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module a file under ``root`` (a folder mapped to ``recstream.<folder>``)
    imports, anywhere in it (also inside functions and ``TYPE_CHECKING`` blocks), as
    ``(line, absolute dotted name)``."""
    package = ".".join(("recstream", *path.relative_to(root).with_suffix("").parts[:-1]))
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
    f.write_text("import recstream.streams.app\nfrom . import records\nfrom ..engine import Engine\ndef g():\n    from streams.records import Item\n")
    assert imported_modules(f, tmp_path) == [
        (1, "recstream.streams.app"),
        (2, "recstream.scoring.sub"),
        (3, "recstream.scoring.engine"),
        (5, "streams.records"),
    ]


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_streams(layer: str) -> None:
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {name}" for path in files for line, name in imported_modules(path) if name == UPPER or name.startswith(UPPER + ".")
    ]
    assert not upward, f"{layer}/ imports {UPPER}/:\n" + "\n".join(upward)


def test_nothing_imports_the_folders_by_their_generic_names() -> None:
    """``pip install`` puts only ``recstream`` on the path: ``import streams`` would fail there
    (or find an unrelated project of that name)."""
    files = [p for d in (*FOLDERS, "recstream", "tests", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
    bare = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in files for line, name in imported_modules(path) if name.split(".")[0] in FOLDERS]
    assert not bare, "imports outside the recstream namespace:\n" + "\n".join(bare)
