"""The golden reference files under test/data (written by tools/reference/*.py)."""

from __future__ import annotations

import json
import os

DATA = os.path.join(os.path.dirname(__file__), "data")


def load_json(name: str):
    """A reference file of test/data, parsed."""
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)
