"""Search methods, selectable by name (``method=...``)."""

from __future__ import annotations

from fastdarts.methods.base import SearchMethod
from fastdarts.methods.darts import Darts, DartsSecondOrder
from fastdarts.methods.pcdarts import PCDarts

METHODS: dict[str, type[SearchMethod]] = {
    "darts": Darts,
    "darts2": DartsSecondOrder,
    "pcdarts": PCDarts,
}


def get_method(name: str) -> type[SearchMethod]:
    """The method class registered under ``name``; unknown names raise a ValueError listing the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None
