"""JSON configuration files of model folders, read as hostile input."""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from ..errors import ModelLoadError


def read_json_object(path: str, required: bool = True) -> Dict[str, Any]:
    """The JSON object in ``path``; {} when absent and not required.

    A missing required file, unparsable JSON or a non-object raise
    ModelLoadError naming the file.
    """
    if not os.path.isfile(path):
        if required:
            raise ModelLoadError(f"{path} is missing")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot be parsed ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
