"""The wheel: one importable package, ``recstream``, that works outside the checkout.

The wheel is built from this checkout and unpacked into a new virtualenv whose only other
path is the test environment's site-packages (the dependencies; its editable install of
recstream is not loaded: ``.pth`` files of a path added that way are not run).  Then, from
a folder outside the checkout: ``import recstream`` and ``python -m recstream kafka``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the checked-in files (setuptools builds in the source folder,
    and would ship whatever an earlier build left in its build/)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True, cwd=ROOT).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)], check=True, capture_output=True, cwd=out)
    (whl,) = out.glob("recstream-*.whl")
    return whl


def test_the_wheel_holds_one_package_with_the_broker_script(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"recstream"}
    for path in (
        "recstream/__init__.py",
        "recstream/__main__.py",
        "recstream/streams/cli/__init__.py",
        "recstream/scoring/engine.py",
        "recstream/encoders/text.py",
        "recstream/deploy/kafka/kafka.sh",
        "recstream/deploy/kafka/pom.xml",
        "recstream/streams/schemas/clicks.schema.json",
        "recstream/streams/demo/catalog.jsonl",
    ):
        assert path in names, path
    files = subprocess.run(["git", "ls-files", "streams", "scoring", "encoders"], check=True, capture_output=True, text=True, cwd=ROOT)
    checked_in = {name for name in files.stdout.split() if name.endswith(".py")}
    shipped = {n.removeprefix("recstream/") for n in names if n.endswith(".py") and not n.startswith("recstream/__")}
    assert shipped == checked_in


def test_installed_outside_the_checkout_it_imports_and_runs_the_broker_script(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    zipfile.ZipFile(wheel).extractall(site)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RECSTREAM_HOME", "RECSTREAM_KAFKA_DATA")}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"))

    code = (
        "import sys, recstream, recstream.scoring.engine as e; "
        "print(recstream.__file__); print(e.__file__); "
        "print([m for m in ('streams', 'scoring', 'encoders') if m in sys.modules])"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True, env=env, cwd=home).stdout.split("\n")
    assert out[0] == str(site / "recstream" / "__init__.py")
    assert out[1] == str(site / "recstream" / "scoring" / "engine.py")
    assert out[2] == "[]"

    # the shipped broker script answers (nothing runs on this port), with its data in the user's state folder
    status = subprocess.run([str(python), "-m", "recstream", "kafka", "status", "--port", "1"], capture_output=True, text=True, env=env, cwd=home)
    assert status.returncode == 3, status.stderr
    assert "not running" in status.stdout + status.stderr
    logs = subprocess.run([str(python), "-m", "recstream", "kafka", "logs", "--port", "1"], capture_output=True, text=True, env=env, cwd=home)
    assert str(home / "state" / "recstream" / "kafka" / "data-1" / "server.log") in logs.stderr  # none yet, but there
