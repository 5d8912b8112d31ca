"""The package's layers import downwards only (DESIGN.md "Layers"; issue 19).

ros/ -> runtime/ -> models/, loaders/ -> export/, backends/ -> contract.py, errors.py.
Read from the source with ``ast`` (every import, lazy ones inside functions
too), so a new arrow the wrong way fails here before anyone trips on it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Dict, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "edgellm_ros")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports() -> Dict[str, Set[str]]:
    """Module name -> every module it imports (relative imports resolved)."""
    out: Dict[str, Set[str]] = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(root, f)
            name = _module_name(path)
            package = name if f == "__init__.py" else name.rsplit(".", 1)[0]
            found: Set[str] = set()
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = package.split(".")
                        base = ".".join(parts[:len(parts) - node.level + 1])
                        mod = f"{base}.{node.module}" if node.module else base
                    else:
                        mod = node.module or ""
                    found.add(mod)
                    found.update(f"{mod}.{a.name}" for a in node.names)   # "from . import x"
            out[name] = found
    return out


IMPORTS = _imports()


def _offenders(owner: str, forbidden: tuple) -> Dict[str, list]:
    bad = {}
    for mod, deps in IMPORTS.items():
        if mod == owner or mod.startswith(owner + "."):
            hits = sorted(d for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden))
            if hits:
                bad[mod] = hits
    return bad


def test_the_walk_sees_the_package():
    assert "edgellm_ros.runtime.engine" in IMPORTS and "edgellm_ros.backends.onnxruntime" in IMPORTS
    assert "edgellm_ros.backends" in IMPORTS["edgellm_ros.runtime.engine"]   # the one composition root


@pytest.mark.parametrize("owner, forbidden", [
    ("edgellm_ros.backends", ("edgellm_ros.runtime", "edgellm_ros.export", "edgellm_ros.ros",
                              "edgellm_ros.selftest", "edgellm_ros.cli")),
    ("edgellm_ros.contract", ("edgellm_ros.runtime", "edgellm_ros.export", "edgellm_ros.ros",
                              "edgellm_ros.backends", "edgellm_ros.loaders", "onnx", "onnxruntime")),
    ("edgellm_ros.errors", ("edgellm_ros",)),
    ("edgellm_ros.models", ("edgellm_ros.runtime", "edgellm_ros.export", "edgellm_ros.ros",
                            "edgellm_ros.backends")),
    ("edgellm_ros.loaders", ("edgellm_ros.runtime", "edgellm_ros.export", "edgellm_ros.ros",
                             "edgellm_ros.backends")),
    ("edgellm_ros.export", ("edgellm_ros.runtime", "edgellm_ros.ros", "edgellm_ros.backends")),
    ("edgellm_ros.runtime", ("edgellm_ros.ros", "edgellm_ros.selftest", "edgellm_ros.cli",
                             "edgellm_ros.synthetic")),
    ("edgellm_ros.synthetic", ("edgellm_ros.ros",)),
])
def test_a_layer_never_imports_the_layers_above_it(owner, forbidden):
    assert _offenders(owner, forbidden) == {}


def test_only_the_ros_layer_imports_rclpy_and_the_generated_interfaces():
    ros_only = ("rclpy", "rosidl_runtime_py", "launch", "launch_ros", "lifecycle_msgs", "sensor_msgs",
                "std_msgs", "edgellm_ros.msg", "edgellm_ros.srv")
    bad = {m: d for m, d in ((m, _offenders(m, ros_only).get(m)) for m in IMPORTS) if d}
    assert {m: d for m, d in bad.items() if not m.startswith("edgellm_ros.ros")} == {}


def test_no_module_imports_a_private_name_of_another():
    bad = sorted(d for deps in IMPORTS.values() for d in deps
                 if d.startswith("edgellm_ros.") and d.rsplit(".", 1)[-1].startswith("_")
                 and not d.endswith("__init__"))
    assert bad == []


def test_importing_the_runtime_and_the_backends_imports_neither_onnx_nor_rclpy():
    code = ("import sys\n"
            "import edgellm_ros.runtime.engine, edgellm_ros.runtime.generation, edgellm_ros.runtime.speculative\n"
            "import edgellm_ros.runtime.vision, edgellm_ros.backends.onnxruntime, edgellm_ros.backends.tensorrt\n"
            "import edgellm_ros.backends.tensorrt.decoder, edgellm_ros.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'rclpy')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_exporter_module_is_in_the_exporter_digest():
    """A graph edit must make engine folders stale: engine_dir hashes these files."""
    from edgellm_ros.runtime.engine_dir import EXPORTER_SOURCES
    export = {f"export/{f}" for f in os.listdir(os.path.join(PKG, "export"))
              if f.endswith(".py") and f != "__init__.py"}
    assert export - set(EXPORTER_SOURCES) == set()
    assert all(os.path.isfile(os.path.join(PKG, f)) for f in EXPORTER_SOURCES)
