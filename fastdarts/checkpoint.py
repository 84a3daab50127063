"""Checkpoint files: crash-safe writes, safe loads, and checks that a checkpoint fits the run.

Writing (:func:`save_checkpoint`): the state goes to a temporary file next to the checkpoint,
is flushed and ``fsync``-ed, then ``os.replace``-d over the old file, and the directory is
``fsync``-ed so that the rename itself survives a power cut. A crash, a kill or a full disk at
any point leaves either the previous checkpoint or the new one, never a torn file; a failed
write removes its temporary file and raises :class:`CheckpointWriteError`, one line naming the
cause.

Reading (:func:`load_checkpoint`): ``torch.load(weights_only=True)`` only rebuilds tensors and
plain containers, so a file that would run code when unpickled is refused. Truncated or
foreign files raise :class:`CheckpointError` (a ``ValueError``).

Fitting (:func:`check_kind`, :func:`check_config_matches`, :func:`check_state_fits`): a
checkpoint of another space, method, width, seed... is refused with the list of differing
keys before anything is loaded or written.
"""

from __future__ import annotations

import errno
import os
import pickle
from typing import Any, Iterable, Mapping

import torch

CHECKPOINT = "checkpoint.pt"

# Keys each kind of checkpoint holds (search: fastdarts.search, train: fastdarts.train).
REQUIRED_KEYS = {
    "search": ("epoch", "model", "arch", "method", "rng", "history", "config"),
    "train": ("epoch", "model", "optimizer", "rng", "config"),
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, foreign, or from another configuration."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, read-only directory, ...); the previous one is intact.

    ``errno`` is the cause's; ``str()`` is the one-line message (without the ``[Errno N]`` prefix).
    """

    def __str__(self) -> str:
        return str(self.strerror)


def _first_line(err: BaseException) -> str:
    """The first sentence of the first line of ``err`` (torch's file errors append paragraphs of advice)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line.split(". ", 1)[0].rstrip(".")


def _unpickler_detail(err: BaseException) -> str:
    """The informative part of torch's multi-line ``weights_only`` refusal (not its boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            detail = detail or next((rest for rest in lines[i + 1:] if rest), "")
            return detail.split(" Please use ", 1)[0].rstrip(".")
        if "GLOBAL" in line:
            return line.rstrip(".")
    return _first_line(err)


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (POSIX; directories cannot be opened on Windows)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically and durably (temporary file, fsync, rename, fsync dir).

    The temporary file ``.<name>.<pid>.tmp`` is created exclusively (never through a symlink);
    ones left by killed processes are removed first.

    Raises:
        CheckpointWriteError: when the write fails (ENOSPC, EROFS, EACCES, ...); the file at
            ``path`` is then untouched and the temporary file removed.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stale = f".{name}."
    tmp = os.path.join(folder, f"{stale}{os.getpid()}.tmp")
    try:
        for entry in os.listdir(folder):
            if entry.startswith(stale) and entry.endswith(".tmp"):
                _remove(os.path.join(folder, entry))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError):
            code = err.errno if err.errno is not None else errno.EIO
            kept = "the previous checkpoint is intact" if os.path.isfile(path) else "no checkpoint was written"
            raise CheckpointWriteError(code, f"cannot write checkpoint {path}: {os.strerror(code)} "
                                             f"[{errno.errorcode.get(code, code)}]; {kept}") from err
        raise


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated, corrupt or non-checkpoint file, or one holding objects
            other than tensors and plain data (which ``weights_only`` refuses to build).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(err)
        if "GLOBAL" in detail:  # weights_only refuses globals it does not know: this file could run code
            raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain data, which "
                                  f"weights_only loading refuses ({detail})") from err
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a checkpoint ({detail})") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, ValueError... for torn files
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a checkpoint "
                              f"({type(err).__name__}: {_first_line(err)})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a fastdarts checkpoint (it holds a "
                              f"{type(state).__name__}, not a dict)")
    return state


def check_kind(state: Mapping[str, Any], kind: str, path: str) -> None:
    """Refuse a checkpoint that lacks the keys a ``kind`` (``"search"`` or ``"train"``) run saves."""
    missing = [k for k in REQUIRED_KEYS[kind] if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a fastdarts {kind} checkpoint (missing "
                              f"{', '.join(missing)})")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """``"key: saved vs current"`` for each dotted key under one of ``keys`` whose values differ."""
    a, b = _flatten(saved), _flatten(current)
    roots = tuple(keys)

    def covered(k: str) -> bool:
        return any(k == r or k.startswith(f"{r}.") for r in roots)

    names = sorted(k for k in set(a) | set(b) if covered(k))
    both = [f"{k}={a[k]!r} (checkpoint) vs {b[k]!r} (now)" for k in names if k in a and k in b and a[k] != b[k]]
    if both:  # keys only one side has then follow from these (another method's defaults, ...)
        return both
    return [f"{k}={a.get(k, '<unset>')!r} (checkpoint) vs {b.get(k, '<unset>')!r} (now)" for k in names
            if (k in a) != (k in b)]


def check_config_matches(state: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str],
                         path: str) -> None:
    """Refuse a checkpoint whose saved config differs from ``current`` in any of ``keys``.

    ``keys`` are top-level config names (``"C"``, ``"data"``, ...); nested sections are
    compared field by field and every difference is listed.
    """
    diffs = config_differences(state.get("config", {}), current, keys)
    if diffs:
        raise CheckpointError(f"checkpoint {path} comes from another configuration: {'; '.join(diffs)}; "
                              "resume with the run's own settings, or start a new run_dir")


def check_state_fits(module_state: Mapping[str, torch.Tensor], saved: Mapping[str, Any], what: str,
                     path: str) -> None:
    """Refuse a saved ``state_dict`` whose keys or shapes differ from ``module_state``'s (listed, at most 3 each)."""
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"checkpoint {path}: '{what}' is a {type(saved).__name__}, not a state dict")
    missing = [k for k in module_state if k not in saved]
    unexpected = [k for k in saved if k not in module_state]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in module_state.items()
              if k in saved and isinstance(saved[k], torch.Tensor) and saved[k].shape != v.shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs now)", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint {path}: '{what}' does not fit this network ({'; '.join(problems)})")
