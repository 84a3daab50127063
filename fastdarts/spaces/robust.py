"""RobustDARTS search spaces S1–S4 (automl/RobustDARTS ``src/spaces.py``) and Λ-DARTS' S5.

Each space is the DARTS cell and macro structure with its own candidate list on every edge;
:func:`robust_primitives` returns the per-edge lists that
:class:`fastdarts.spaces.darts.DartsSupernet` takes as ``primitives=``. The order inside each
list is the α column order of the original code. ``"s5"`` is Λ-DARTS' ``s5``
(dr-faustus/Lambda-DARTS ``sota/cnn/spaces.py:80-92``): the DARTS space without ``none``, the
other 7 ops in quark0's order; the full 8-op DARTS space is ``"darts"``.
"""

from __future__ import annotations

from fastdarts.ops import DARTS_PRIMITIVES
from fastdarts.spaces.darts import NUM_EDGES

_SHORT = {
    "skip": "skip_connect",
    "max": "max_pool_3x3",
    "avg": "avg_pool_3x3",
    "sep3": "sep_conv_3x3",
    "dil3": "dil_conv_3x3",
    "dil5": "dil_conv_5x5",
}

# S1: one row per edge (edge order n0←s0, n0←s1, n1←s0, n1←s1, n1←n0, n2←s0, ...),
# columns (normal pair, reduce pair).
_S1 = (
    (("skip", "dil3"), ("max", "avg")),    # 0  n0←s0
    (("skip", "dil5"), ("max", "dil3")),   # 1  n0←s1
    (("skip", "dil5"), ("max", "avg")),    # 2  n1←s0
    (("skip", "sep3"), ("max", "avg")),    # 3  n1←s1
    (("skip", "dil3"), ("skip", "dil5")),  # 4  n1←n0
    (("max", "skip"), ("max", "avg")),     # 5  n2←s0
    (("skip", "sep3"), ("max", "sep3")),   # 6  n2←s1
    (("skip", "sep3"), ("skip", "dil3")),  # 7  n2←n0
    (("skip", "dil3"), ("skip", "dil5")),  # 8  n2←n1
    (("skip", "sep3"), ("max", "avg")),    # 9  n3←s0
    (("max", "skip"), ("max", "avg")),     # 10 n3←s1
    (("skip", "dil3"), ("skip", "dil5")),  # 11 n3←n0
    (("dil3", "dil5"), ("skip", "dil5")),  # 12 n3←n1
    (("dil3", "dil5"), ("skip", "dil5")),  # 13 n3←n2
)

# S2–S4: the same candidate list on every edge of both cell types.
_UNIFORM = {
    "s2": ("skip_connect", "sep_conv_3x3"),
    "s3": ("none", "skip_connect", "sep_conv_3x3"),
    "s4": ("noise", "sep_conv_3x3"),
    "s5": tuple(p for p in DARTS_PRIMITIVES if p != "none"),  # Λ-DARTS: `'none'` commented out
}

SPACES = ("s1", "s2", "s3", "s4", "s5")


def robust_primitives(space: str) -> dict[str, list[tuple[str, ...]]]:
    """Per-edge candidate lists of RobustDARTS space ``"s1"``–``"s4"`` or Λ-DARTS' ``"s5"``.

    Returns:
        ``{"normal": [14 tuples], "reduce": [14 tuples]}``; tuple ``e`` holds the op names of
        edge ``e`` in α column order.

    Raises:
        ValueError: for any other space name.
    """
    key = space.lower() if isinstance(space, str) else space
    if key == "s1":
        return {
            "normal": [tuple(_SHORT[p] for p in normal) for normal, _ in _S1],
            "reduce": [tuple(_SHORT[p] for p in reduce) for _, reduce in _S1],
        }
    if key in _UNIFORM:
        ops = _UNIFORM[key]
        return {"normal": [ops] * NUM_EDGES, "reduce": [ops] * NUM_EDGES}
    raise ValueError(f"unknown RobustDARTS space {space!r}; choose one of {SPACES}")
