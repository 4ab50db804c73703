"""An installed jinglian runs without the repository: the wheel ships the default params.

The wheel is built from this checkout and installed (without dependencies) into a fresh
virtual environment whose dependencies come from the running one through a ``.pth`` line (a
plain path line: the running environment's own ``.pth`` files, and so its editable jinglian,
are not processed); commands run from a temporary directory with no ``PYTHONPATH``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, env)`` of a fresh venv holding only the jinglian wheel (deps via a .pth line)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(ROOT)], tmp, env)
    wheel = next((tmp / "dist").glob("jinglian-*.whl"))
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    _run([str(base), "-m", "venv", "--without-pip", str(tmp / "venv")], tmp, env)
    python = tmp / "venv" / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).stdout.strip())
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], tmp, env)
    return python, env


def test_the_wheel_ships_the_default_params_and_runs_outside_the_repository(installed, tmp_path, data_dir):
    python, env = installed
    where = _run([str(python), "-c", "import etl, etl.core.config as c; print(etl.__file__); print(c.DEFAULT_PARAMS)"], tmp_path, env).stdout.split()
    assert not where[0].startswith(str(ROOT)), f"etl imported from the checkout: {where[0]}"
    assert Path(where[1]).name == "params.yaml" and "site-packages" in where[1]
    assert Path(where[1]).read_text(encoding="utf-8") == (ROOT / "params.yaml").read_text(encoding="utf-8")
    assert "--input" in _run([str(python), "-m", "etl.clean", "--help"], tmp_path, env).stdout
    (tmp_path / "in.jsonl").write_text("".join((data_dir / "general_en.jsonl").read_text(encoding="utf-8").splitlines(True)[:20]), encoding="utf-8")
    _run([str(python), "-m", "etl.clean", "--input", "in.jsonl", "--output", "out", "--no-progress"], tmp_path, env)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["num_in"] == 20 and stats["num_kept"] + stats["num_rejected"] == 20
