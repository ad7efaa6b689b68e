"""Shared output of the benchmark scripts: results JSON with the machine facts, plot colours."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import torch


def machine() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def method_colors(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{method: matplotlib colour} for `results` ({panel: {method: ...}}): one colour a method in every panel,
    in the order the methods first appear."""
    return {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(m for panel in results.values() for m in panel))}


def write_json(folder: str, payload: dict[str, Any], name: str = "results.json") -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=2)
    return path

