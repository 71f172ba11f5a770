"""A non-editable install works as the README says: the wheel holds only the two entry-point modules and our
packages at the top level, and every console script answers `--help` from an empty folder.

The wheel goes into a fresh virtual environment that sees this environment's third-party packages (torch is
not reinstalled: no network, and it is large) but not this checkout: a `.pth` file adds our site-packages
folder *after* the new one, and `.pth` files of an added folder are not run, so the editable install stays out.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO_ROOT

ENTRY_MODULES = {"eval_cir.py", "train_accelerate.py"}


def _console_scripts() -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines if line.strip()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("install")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO_ROOT), "-w", work],
        check=True, capture_output=True, cwd=work,
    )
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = Path(subprocess.check_output(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    (purelib / "zz_outer_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(work.glob("facap-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", "--no-index",
         wheel], check=True, capture_output=True,
    )
    return venv


def test_only_entry_points_and_packages_at_the_top_level(installed):
    purelib = next((installed / "lib").glob("python3*/site-packages"))
    record = next(purelib.glob("facap-*.dist-info")) / "RECORD"
    paths = [line.split(",")[0] for line in record.read_text().splitlines()]
    top = {path.split("/")[0] for path in paths if not path.startswith("..")}  # "../../../bin/...": scripts
    modules = {name for name in top if name.endswith(".py")}
    assert modules == ENTRY_MODULES
    packages = {name for name in top if not name.endswith((".py", ".dist-info")) and name != "__pycache__"}
    assert all(name.startswith(("facap_", "modeling_")) for name in packages), packages


def test_the_wheel_is_imported_not_this_checkout(installed, tmp_path):
    location = subprocess.check_output(
        [installed / "bin" / "python", "-c", "import facap_dataset; print(facap_dataset.__file__)"], cwd=tmp_path,
        text=True,
    )
    assert location.startswith(str(installed))


@pytest.mark.parametrize("script", _console_scripts())
def test_console_script_help_runs_from_an_empty_folder(installed, script, tmp_path):
    # A folder holding modules named like our old loose modules must not shadow anything.
    (tmp_path / "train_data.py").write_text("raise SystemExit('the user folder shadowed our code')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    done = subprocess.run([installed / "bin" / script, "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_python_m_train_accelerate_from_a_folder_with_its_own_train_data(installed, tmp_path):
    (tmp_path / "train_data.py").write_text("raise SystemExit('the user folder shadowed our code')\n")
    done = subprocess.run([installed / "bin" / "python", "-m", "train_accelerate", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
