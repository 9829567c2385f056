"""Read a JSON object from a file with errors that name the file: missing, corrupt, or not an object."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: str | Path, missing: str = "missing") -> dict:
    """The parsed object; ValueError('<path>: <missing>' / corrupt JSON at a line / not an object)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: {missing}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON (line {e.lineno}): {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
