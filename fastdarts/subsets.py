"""The weight / architecture image lists of an ImageFolder search, kept in the run directory.

PC-DARTS searches ImageNet on 10 % (weights) and 2.5 % (architecture) of each class's training
images, sampled once before the search (README.md:47). fastdarts draws these subsets from the run
seed (:func:`fastdarts.data.build_search_data`) and writes the two file lists to
``RUN_DIR/subsets.json``; a resumed (or restarted) run reads them back instead of drawing again, so it
trains on the same images even if the folder has changed since, and refuses to start when a listed
image is gone.

File format (JSON)::

    {"format": 1, "root": "/abs/path/train", "classes": [...],
     "seed": 2, "train_portion": 0.5, "subset": 0.1, "arch_subset": 0.025, "single_level": false,
     "weights": ["n01440764/n01440764_10026.JPEG", ...], "architecture": [...]}

Paths are relative to the training folder, with ``/`` separators, so a copy of the data set at
another place (e.g. a local SSD) fits the same file; ``root`` is informative only.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import torch

SUBSETS_FILE = "subsets.json"
FORMAT = 1
# Settings a subsets file was drawn with; a run with other values must not reuse it.
SETTINGS = ("seed", "train_portion", "subset", "arch_subset", "single_level")


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def make_record(root: str, paths: Sequence[str], classes: Sequence[str], weights: torch.Tensor,
                architecture: torch.Tensor, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of the two splits (index tensors into ``paths``) of the folder ``root``."""
    return {"format": FORMAT, "root": os.path.abspath(root), "classes": list(classes),
            **{k: settings[k] for k in SETTINGS},
            "weights": [_relative(paths[i], root) for i in weights.tolist()],
            "architecture": [_relative(paths[i], root) for i in architecture.tolist()]}


def save_subsets(path: str, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_subsets(path: str) -> dict[str, Any]:
    """The record in ``path``, checked for its keys and types (one-line ``ValueError`` naming the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"subsets file {path} cannot be read ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]}); delete it to draw the subsets again") from None
    required = ("format", "classes", "weights", "architecture", *SETTINGS)
    missing = [k for k in required if not isinstance(record, dict) or k not in record]
    if missing:
        raise ValueError(f"subsets file {path} is not a fastdarts subsets file (missing {', '.join(missing)})")
    if record["format"] != FORMAT:
        raise ValueError(f"subsets file {path} has format {record['format']!r}; this version reads format {FORMAT}")
    for key in ("classes", "weights", "architecture"):
        if not isinstance(record[key], list) or not all(isinstance(v, str) for v in record[key]):
            raise ValueError(f"subsets file {path}: {key!r} must be a list of strings")
    return record


def match_subsets(path: str, record: dict[str, Any], root: str, paths: Sequence[str], classes: Sequence[str],
                  settings: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into ``paths`` of the record's weight and architecture images, in the record's order.

    Raises:
        ValueError: one line naming ``path`` when the record was drawn with other settings, lists
            other classes, or lists images that are not among the folder's training images.
    """
    differ = [f"{k}={record[k]!r} (this run: {settings[k]!r})" for k in SETTINGS if record[k] != settings[k]]
    if differ:
        raise ValueError(f"subsets file {path} was drawn with {', '.join(differ)}; use the same settings, or "
                         "another run_dir to draw new subsets")
    if list(record["classes"]) != list(classes):
        extra = sorted(set(record["classes"]) - set(classes))
        new = sorted(set(classes) - set(record["classes"]))
        raise ValueError(f"subsets file {path} does not match the ImageFolder {root}: its {len(record['classes'])} "
                         f"classes differ from the folder's {len(classes)} (missing in the folder: "
                         f"{', '.join(extra[:3]) or 'none'}; new: {', '.join(new[:3]) or 'none'})")
    index = {_relative(p, root): i for i, p in enumerate(paths)}
    out = []
    for key in ("weights", "architecture"):
        missing = [r for r in record[key] if r not in index]
        if missing:
            raise ValueError(f"subsets file {path} does not match the ImageFolder {root}: {len(missing)} of its "
                             f"{key} images are not among the folder's training images (first: {missing[0]})")
        out.append(torch.tensor([index[r] for r in record[key]], dtype=torch.long))
    if not out[0].numel() or not out[1].numel():
        raise ValueError(f"subsets file {path} lists no {'weight' if not out[0].numel() else 'architecture'} images")
    return out[0], out[1]


def folder_subsets(subsets_file: str, root: str, paths: Sequence[str], classes: Sequence[str],
                   weights: torch.Tensor, architecture: torch.Tensor,
                   settings: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], bool]:
    """The splits of an ImageFolder search: those of ``subsets_file`` when it exists, else the freshly
    drawn ``weights`` / ``architecture`` indices.

    Returns ``(weights, architecture, record, reused)``; the caller writes ``record`` to
    ``subsets_file`` (:func:`save_subsets`) when ``reused`` is False, once the run directory may be
    written.
    """
    if os.path.isfile(subsets_file):
        record = read_subsets(subsets_file)
        w, a = match_subsets(subsets_file, record, root, paths, classes, settings)
        return w, a, record, True
    return weights, architecture, make_record(root, paths, classes, weights, architecture, settings), False
