"""Linters as tests, in every environment (no ROS needed): flake8 on everything
Python in the repository, pydocstyle's pep257 rules on the package, mypy on the
package (settings: setup.cfg's [flake8], [pydocstyle] and [mypy])."""

import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FILES = sorted(set(
    glob.glob(os.path.join(REPO, "edgellm_ros", "**", "*.py"), recursive=True)
    + glob.glob(os.path.join(REPO, "benchmarks", "*.py"))
    + glob.glob(os.path.join(REPO, "tools", "**", "*.py"), recursive=True)
    + glob.glob(os.path.join(REPO, "test", "**", "*.py"), recursive=True)
    + glob.glob(os.path.join(REPO, "launch", "*.py"))
    + [os.path.join(REPO, "setup.py")]))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_the_file_list_covers_every_layer():
    rel = {os.path.relpath(f, REPO).split(os.sep)[0] for f in FILES}
    assert {"edgellm_ros", "benchmarks", "tools", "test", "launch", "setup.py"} <= rel
    assert any(f.endswith(os.path.join("test", "gpu", "conftest.py")) for f in FILES)


def test_flake8_is_clean():
    proc = _run("flake8", *FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docstrings_follow_pep257():
    proc = _run("pydocstyle", "edgellm_ros")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean_on_the_package():
    proc = _run("mypy", "--no-error-summary", "--cache-dir", os.path.join(REPO, "build", "mypy_cache"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
