"""Search methods, selectable by name (``method=...``); modules are imported on first use."""

from __future__ import annotations

import importlib

from fastdarts.methods.base import SearchMethod

# name -> "module:Class" under fastdarts.methods
METHODS: dict[str, str] = {
    "darts": "darts:Darts",
    "darts2": "darts:DartsSecondOrder",
    "pcdarts": "pcdarts:PCDarts",
    "prdarts": "prdarts:PRDarts",
    "lambda_darts": "lambda_darts:LambdaDarts",
    "dropnas": "dropnas:DropNAS",
    "gaea": "gaea:GaeaDarts",
    "gaea_pcdarts": "gaea:GaeaPCDarts",
    "gdas": "gdas:GDAS",
}


def get_method(name: str) -> type[SearchMethod]:
    """The method class registered under ``name``; unknown names raise a ValueError listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(f"fastdarts.methods.{module}"), cls)
