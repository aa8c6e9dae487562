"""``pip install .`` works: the wheel holds every file hpo needs, installs into a fresh venv, and
its ``hpo`` command runs from that copy, not from the checkout.

The fresh venv gets hpo from the wheel alone (``--no-deps``); its dependencies come from this
test venv through a ``.pth`` line naming this venv's site-packages. A path a ``.pth`` line adds
is not scanned for ``.pth`` files of its own, so this venv's editable hpo (a ``.pth`` import
hook) stays out: the test checks that it does.
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

from hpo import __version__

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "hpo-finetune"


def _package_files() -> set[str]:
    """Every file of the hpo package in the checkout, as a wheel names it."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "hpo").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (a build leaves build/ and egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "hpo", src / "hpo", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(out), str(src)],
        check=True, capture_output=True, text=True)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no dependencies), reaching this venv's packages
    through a ``.pth`` line; its bin directory."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "test-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--quiet", str(wheel)],
        check=True, capture_output=True, text=True)
    return env / "bin"


def _run(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess:
    """``argv`` run as the fresh venv's command, outside the checkout, with no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True,
                          cwd=bin_dir.parent, env=env, timeout=120)


def test_wheel_is_named_for_the_distribution_and_holds_every_package_file(wheel):
    assert wheel.name.startswith(f"{DISTRIBUTION.replace('-', '_')}-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _package_files() - names
    assert not missing, f"not in the wheel (package-data?): {sorted(missing)}"
    entry_points = zipfile.ZipFile(wheel).read(
        f"{DISTRIBUTION.replace('-', '_')}-{__version__}.dist-info/entry_points.txt").decode()
    assert "hpo = hpo.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_runs_hpo_from_the_venv_not_the_checkout(installed):
    where = _run(installed, "python", "-c",
                 "import hpo, importlib.metadata as m, sys; "
                 f"print(hpo.__file__); print(m.version({DISTRIBUTION!r})); "
                 "print(any('__editable__' in m for m in sys.modules)); "
                 "print('\\n'.join(sys.path))")
    assert where.returncode == 0, where.stderr
    hpo_file, dist_version, editable_hook, *path = where.stdout.splitlines()
    assert Path(hpo_file).is_relative_to(installed.parent), hpo_file
    assert dist_version == __version__
    # This venv's editable hpo (its .pth import hook) is not processed through the .pth line.
    assert editable_hook == "False"
    assert str(ROOT) not in path and str(ROOT / "hpo") not in path

    helped = _run(installed, "hpo", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "usage: hpo" in helped.stdout

    version = _run(installed, "hpo", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"hpo {__version__}"


def test_reproducibility_record_lists_hpo_under_its_distribution_name():
    from hpo.provenance import package_versions

    assert package_versions()[DISTRIBUTION] == __version__
