"""Shared by the benchmarks: facts about the machine and the installed packages, and the
output of their JSON document."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def emit_result(result: dict, output: Path | None, log: Callable[[str], None]) -> None:
    """Print the JSON document on stdout and, with ``output``, also write it there (a write
    failure is logged, the printed document stands)."""
    doc = json.dumps(result, indent=2, default=str)
    print(doc)
    sys.stdout.flush()
    if output:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(doc + "\n")
        except OSError as exc:
            log(f"could not write {output}: {exc}")
