"""JSON configuration files of model folders, read as hostile input."""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from ..errors import ModelLoadError
from .files import open_regular

#: The largest JSON configuration file read (a tokenizer_config.json with a long
#: chat template is well under 1 MiB).
MAX_JSON_BYTES = 16 * 2**20


def read_json(path: str, max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """The JSON value in ``path``.

    A missing file, a path that is not a regular file (a FIFO, a symlink to
    /dev/zero), a file over ``max_bytes`` or unparsable JSON raise
    ModelLoadError (CorruptModelError for a non-regular file) naming the file.
    """
    if not os.path.lexists(path):
        raise ModelLoadError(f"{path} is missing")
    with open_regular(path, what) as f:
        text = f.read(max_bytes + 1)
    if len(text) > max_bytes:
        raise ModelLoadError(f"{path}: larger than {max_bytes} bytes; not read")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: cannot be parsed ({exc})") from exc


def read_json_object(path: str, required: bool = True, max_bytes: int = MAX_JSON_BYTES) -> Dict[str, Any]:
    """The JSON object in ``path``; {} when absent and not required.

    A missing required file, a path that is not a regular file (a FIFO, a
    symlink to /dev/zero), a file over ``max_bytes``, unparsable JSON or a
    non-object raise ModelLoadError naming the file.
    """
    if not os.path.lexists(path) and not required:
        return {}
    data = read_json(path, max_bytes)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
