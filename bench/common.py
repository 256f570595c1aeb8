"""Shared by the benchmarks: facts about the machine and the installed packages, and the
main wrapper every benchmark's ``main`` uses around its run: the ``--quick`` and
``--output`` options (:func:`add_run_args`), the document's first keys (:func:`bench_header`),
the outcome of the run (:class:`Guarded`: exit status 0, 1 on an error, 130 when
interrupted, the error in the document) and the output of the JSON document
(:func:`finish`, :func:`emit_result`)."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType


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


def add_run_args(p: argparse.ArgumentParser, quick: str | None = None) -> None:
    """``--quick`` (a smoke run, described by ``quick``; none without it) and ``--output``."""
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--output", type=Path, help="also write the JSON document to this file")


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that ran ``script`` (``bench/<name>.py``), as a shell would take it."""
    return shlex.join([script, *(sys.argv[1:] if argv is None else argv)])


def local_time(t: float | None = None) -> str:
    """``t`` (default now, from :func:`time.time`) as local ISO 8601 time with the offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def bench_header(benchmark: str, script: str, argv: Sequence[str] | None) -> dict:
    """The first keys of a benchmark's document: its name, when it started (now) and the
    command."""
    return {"benchmark": benchmark, "started_at": local_time(), "command": command_line(script, argv)}


class Guarded:
    """``with Guarded(result, log) as run: ...`` then ``return run.status``: the benchmark's
    run, whose end is always reported.  Ctrl-C (KeyboardInterrupt): status 130, ``error``
    ``"interrupted"`` (and a log line with ``say_interrupted``); an exception of ``known``
    (the benchmark's own errors, whose message says it all): status 1, ``error``
    ``known_error(exc)`` (default ``str``) and a log line ``ERROR: ...``; any other
    exception: status 1, ``error`` ``"Type: message"`` and the traceback on stderr.  The
    exception ends there; anything not an :class:`Exception` (SystemExit) goes on."""

    def __init__(
        self,
        result: dict,
        log: Callable[[str], None],
        *,
        known: tuple[type[Exception], ...] = (),
        known_error: Callable[[Exception], str] = str,
        say_interrupted: bool = False,
    ) -> None:
        self.result = result
        self.log = log
        self.known = known
        self.known_error = known_error
        self.say_interrupted = say_interrupted
        self.status = 0

    def __enter__(self) -> Guarded:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if kind is None or exc is None:
            return False
        if isinstance(exc, KeyboardInterrupt):
            self.status = 130
            self.result["error"] = "interrupted"
            if self.say_interrupted:
                self.log("interrupted")
            return True
        if not isinstance(exc, Exception):
            return False
        self.status = 1
        if isinstance(exc, self.known):
            self.result["error"] = self.known_error(exc)
            self.log(f"ERROR: {exc}")
        else:
            self.result["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exception(kind, exc, tb)
        return True


def finish(result: dict, t_start: float, output: Path | None, log: Callable[[str], None]) -> None:
    """Set ``wall_s`` (seconds since ``t_start``, :func:`time.perf_counter`) and emit the
    document (:func:`emit_result`)."""
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    emit_result(result, output, log)
