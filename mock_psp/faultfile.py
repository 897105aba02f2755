"""Read a fault plan from a YAML or JSON file (``paychaos serve psp --faults FILE``).

Every problem becomes a ``FaultFileError`` whose message names the file and, for a
plan that does not validate, the field: the CLI prints it as is, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mock_psp.errors import FaultConfigError
from mock_psp.faults import FaultPlanConfig, parse_fault_config

FILE_BYTES_MAX = 1_000_000


class FaultFileError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def load_fault_plan(path: Path) -> FaultPlanConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FaultFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > FILE_BYTES_MAX:
        raise FaultFileError(f"{path}: larger than {FILE_BYTES_MAX} bytes")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise FaultFileError(f"{path}: not valid {_kind(path)}: {detail}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FaultFileError(f"{path}: a fault plan must be a mapping, not {type(data).__name__}")
    try:
        return parse_fault_config(data)
    except FaultConfigError as exc:
        raise FaultFileError(f"{path}: field {exc.message}") from exc


def _kind(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "YAML"
