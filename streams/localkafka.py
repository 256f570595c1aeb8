"""``recstream kafka ...``: the local development broker.

The work is done by ``deploy/kafka/kafka.sh`` (usable without the virtualenv); this module
finds it and runs it, so the command line and the script behave the same.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

ENV_HOME = "RECSTREAM_HOME"


def script_path() -> Path:
    """deploy/kafka/kafka.sh: of ``$RECSTREAM_HOME`` (a checkout) when set, else the one next
    to this code (the repository's deploy/ folder, or the installed ``recstream.deploy``)."""
    home = os.environ.get(ENV_HOME)
    root = Path(home) if home else Path(__file__).resolve().parents[1]
    return root / "deploy" / "kafka" / "kafka.sh"


def run(action: str, *args: str, port: int | None = None, data_dir: str | None = None) -> int:
    """Run one kafka.sh action; returns its exit status (status: 0 running, 3 not)."""
    script = script_path()
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: reinstall recstream (the package ships it) or set {ENV_HOME} to a source checkout")
    env = dict(os.environ)
    if port is not None:
        env["RECSTREAM_KAFKA_PORT"] = str(port)
    if data_dir is not None:
        env["RECSTREAM_KAFKA_DATA"] = str(data_dir)
    return subprocess.run(["bash", str(script), action, *args], env=env, check=False).returncode


def answers(broker: str, timeout_s: float = 2.0) -> bool:
    """True when the first bootstrap server of ``broker`` accepts a TCP connection."""
    host, _, port = broker.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False
