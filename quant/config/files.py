"""Reading YAML/JSON files users hand over, with one-line errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from quantstage.quant.errors import SpecError

__all__ = ["read_mapping"]

_MAX_BYTES = 16 * 2**20  # a parameters file is text of a few KiB


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else str(problem)


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a ``.yaml``/``.yml``/``.json`` file holds (``what`` says what it is for, in messages);
    SpecError for a missing, binary, unparsable or non-mapping file."""
    file = Path(path)
    shown = repr(str(path))
    if not file.is_file():
        raise SpecError(f"{what} {shown} does not exist; fix: pass the path of a YAML or JSON file")
    if file.stat().st_size > _MAX_BYTES:
        raise SpecError(
            f"{what} {shown} is {file.stat().st_size:,} bytes, not a parameters file; fix: pass the YAML/JSON file"
        )
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(
            f"{what} {shown} is not text (not UTF-8: a binary file?); fix: pass the YAML/JSON file"
        ) from None
    if "\x00" in text:
        raise SpecError(
            f"{what} {shown} is not text (it holds NUL bytes: a binary file?); fix: pass the YAML/JSON file"
        )
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{what} {shown} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{what} {shown} is not valid YAML: {_yaml_error(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{what} {shown} must hold a mapping of fields, got a {type(data).__name__}")
    return data
