"""Where the package's shipped files are: adapters, EAGLE drafts, config.

In a source checkout they sit at the repository root (next to package.xml);
in a colcon install under ``share/edgellm_ros``. ``share_dir()`` finds either.
"""

from __future__ import annotations

import os

from ..errors import ModelLoadError

PACKAGE = "edgellm_ros"
#: The shipped EAGLE-3 draft of the embedded default model.
DEFAULT_DRAFT = os.path.join("drafts", "smollm2-135m-eagle3")


def share_dir() -> str:
    """The folder holding adapters/, drafts/, config/ and launch/."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # edgellm_ros/
    here = os.path.dirname(package)
    if os.path.exists(os.path.join(here, "package.xml")):
        return here  # source checkout
    try:
        from ament_index_python.packages import get_package_share_directory
        return get_package_share_directory(PACKAGE)
    except Exception:
        pass
    prefix = package
    for _ in range(5):  # <prefix>/lib/pythonX.Y/site-packages/edgellm_ros
        prefix = os.path.dirname(prefix)
        cand = os.path.join(prefix, "share", PACKAGE)
        if os.path.isdir(cand):
            return cand
    return here


def resolve_draft(setting: str, model: str) -> str:
    """The draft folder for the ``eagle_draft`` setting ("" when there is none)."""
    if setting == "":
        return ""
    if setting == "default":
        if model:
            return ""  # the shipped draft belongs to the embedded model only
        path = os.path.join(share_dir(), DEFAULT_DRAFT)
        return path if os.path.exists(os.path.join(path, "config.json")) else ""
    path = os.path.abspath(os.path.expanduser(setting))
    if not os.path.isdir(path):
        raise ModelLoadError(f"eagle_draft {setting!r} is not a folder")
    return path
