"""flake8 (setup.cfg settings) on the ROS layer, launch files, packaging and their tests."""

import glob
import os
import subprocess
import sys

from conftest import REPO

FILES = (glob.glob(os.path.join(REPO, "edgellm_ros", "**", "*.py"), recursive=True)
         + glob.glob(os.path.join(REPO, "benchmarks", "*.py"))
         + glob.glob(os.path.join(REPO, "tools", "reference", "*.py"))
         + glob.glob(os.path.join(REPO, "tools", "*.py"))
         + glob.glob(os.path.join(REPO, "test", "*.py"))
         + glob.glob(os.path.join(REPO, "launch", "*.py"))
         + [os.path.join(REPO, f) for f in ("setup.py", "test/conftest.py",
                                            "edgellm_ros/__init__.py")])


def test_flake8_is_clean():
    proc = subprocess.run([sys.executable, "-m", "flake8", *sorted(FILES)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
