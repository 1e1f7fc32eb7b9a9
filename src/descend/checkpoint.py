"""Atomic, verified checkpoints: safetensors for tensors, JSON for everything else, no pickle.

Layout of a checkpoint directory::

    <dir>/ckpt-000001234/            one complete checkpoint, named by optimizer step
        tensors.safetensors          model state, optimizer state, best weights, RNG states
                                     (and the guard's rollback point, written at an interrupt)
        state.json                   step/epoch/position, counters, history, config, skeletons
        manifest.json                sha256 and size of the two files above — written LAST
    <dir>/.tmp-ckpt-...              a checkpoint being written (removed when found stale)

A checkpoint is written into a temporary directory, every file is fsynced, the manifest is
written last, and only then is the directory renamed into place (an atomic rename on POSIX),
so a process killed at any instant leaves either the previous checkpoints or the new one,
never a half-written "latest". The newest ``keep`` checkpoints are kept (default 2), so a
checkpoint damaged later on disk falls back to the one before it (a damaged one of a later step
than the run has reached again is never counted among them).

Loading verifies the manifest (sizes and sha256) before reading: safetensors and torch's own
format both load a file with a flipped byte silently. A damaged checkpoint is skipped with a
warning that names the file, and the next older one is used.

Optimizer state is a tree (dict/tuple/list) whose leaves are tensors, numbers, strings or None;
:func:`flatten_tree` stores its tensors by generated keys and its shape as JSON, so state is
matched to parameters by NAME, never by position.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from descend._errors import CheckpointError, describe, message

__all__ = [
    "Checkpoint",
    "check_writable",
    "flatten_tree",
    "is_checkpoint",
    "latest",
    "list_checkpoints",
    "save",
    "tree_signature",
    "unflatten_tree",
]

_NAME = re.compile(r"^ckpt-(\d{9,})$")
TENSORS = "tensors.safetensors"
#: Where the default policy's race keeps its checkpoints, inside a run's checkpoint directory:
#: the race runs before the first epoch, so a run killed during it resumes the race from there
#: (removed once the run's own first checkpoint is written).
RACE_DIR = "race"
STATE = "state.json"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint holds. ``meta`` is JSON-serializable; the rest are tensors."""

    step: int
    model: dict[str, torch.Tensor]
    opt_state: Any
    best: dict[str, torch.Tensor] | None
    meta: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: The divergence guard's rollback point ``(model state, optimizer state)`` when it is not
    #: this checkpoint's own state (one written at an interrupt, between snapshot points).
    rollback: tuple[dict[str, torch.Tensor], Any] | None = None
    #: The epoch's outputs and targets that the running training metric has not summed yet
    #: (summed at the epoch's end, in one order: a resumed run must sum the same tensors).
    metric_pending: tuple[torch.Tensor, torch.Tensor] | None = None


# ---- state trees ----------------------------------------------------------------------


def flatten_tree(tree: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a state tree into a JSON skeleton and ``{key: tensor}``.

    Tensors become ``{"__tensor__": key}``; tuples ``{"__tuple__": [...]}``; dict keys must be
    strings. Python numbers, strings, booleans and None stay in the skeleton.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any) -> Any:
        if torch.is_tensor(node):
            key = f"{prefix}{len(tensors)}"
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            for k in node:
                if not isinstance(k, str):
                    raise CheckpointError(
                        message(
                            "optimizer state",
                            "must use string keys to be checkpointed",
                            f"a key {k!r}",
                            "key per-parameter state by parameter name",
                        )
                    )
            return {"__dict__": {k: walk(v) for k, v in node.items()}}
        if isinstance(node, tuple):
            return {"__tuple__": [walk(v) for v in node]}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            if isinstance(node, float) and node != node:
                return {"__float__": "nan"}
            if isinstance(node, float) and node in (float("inf"), float("-inf")):
                return {"__float__": "inf" if node > 0 else "-inf"}
            return node
        raise CheckpointError(
            message(
                "optimizer state",
                "may hold only tensors, numbers, strings and None",
                describe(node),
                "keep state in plain containers of tensors and numbers",
            )
        )

    return walk(tree), tensors


def unflatten_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_tree`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_tree(v, tensors) for v in skeleton["__tuple__"])
        if "__dict__" in skeleton:
            return {k: unflatten_tree(v, tensors) for k, v in skeleton["__dict__"].items()}
        if "__float__" in skeleton:
            return float(skeleton["__float__"])
    if isinstance(skeleton, list):
        return [unflatten_tree(v, tensors) for v in skeleton]
    return skeleton


def tree_signature(tree: Any, path: str = "") -> dict[str, str]:
    """``{path: "tensor(shape, dtype)" | type name}`` for comparing two state trees."""
    out: dict[str, str] = {}
    if torch.is_tensor(tree):
        out[path or "."] = f"tensor{tuple(tree.shape)} {str(tree.dtype).replace('torch.', '')}"
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(tree_signature(v, f"{path}/{k}"))
    elif isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            out.update(tree_signature(v, f"{path}[{i}]"))
    else:
        out[path or "."] = type(tree).__name__
    return out


# ---- writing --------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_writable(directory: str | Path) -> Path:
    """Create ``directory`` if needed and prove it is writable, or raise CheckpointError."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write-test-{os.getpid()}"
        _write_bytes(probe, b"ok")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(
            message(
                f"checkpoint directory {str(d)!r}",
                "must be a writable directory",
                f"{type(e).__name__}: {e.strerror or e}",
                "choose another checkpoint= path or fix its permissions/free space",
            )
        ) from None
    return d


def _clean_temporaries(d: Path) -> None:
    for p in d.glob(".tmp-ckpt-*"):
        shutil.rmtree(p, ignore_errors=True)


def save(directory: str | Path, ckpt: Checkpoint, *, keep: int = 2) -> Path:
    """Write ``ckpt`` atomically under ``directory``; keep the newest ``keep`` checkpoints.

    Raises OSError (e.g. a full disk) after removing its temporary files; the previous
    checkpoints are untouched in that case.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"ckpt-{ckpt.step:09d}"
    if final.exists() and _verify(final) is None:
        return final  # same step, same state: already safely on disk
    tmp = d / f".tmp-ckpt-{ckpt.step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tensors: dict[str, torch.Tensor] = {}
        for k, v in ckpt.model.items():
            tensors[f"model/{k}"] = v
        if ckpt.best is not None:
            for k, v in ckpt.best.items():
                tensors[f"best/{k}"] = v
        skeleton, opt_tensors = flatten_tree(ckpt.opt_state, "opt/")
        tensors.update(opt_tensors)
        if ckpt.metric_pending is not None:
            tensors["metric_pending/out"], tensors["metric_pending/target"] = ckpt.metric_pending
        rollback_skeleton = None
        if ckpt.rollback is not None:
            rb_model, rb_opt = ckpt.rollback
            for k, v in rb_model.items():
                tensors[f"rollback/model/{k}"] = v
            rollback_skeleton, rb_tensors = flatten_tree(rb_opt, "rollback/opt/")
            tensors.update(rb_tensors)
        rng_json: dict[str, Any] = {}
        for k, v in ckpt.rng.items():
            if torch.is_tensor(v):
                tensors[f"rng/{k}"] = v
            else:
                rng_json[k] = v
        # safetensors refuses shared storage and non-contiguous tensors: write private copies.
        to_write = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        try:
            save_file(to_write, str(tmp / TENSORS))
        except SafetensorError as e:
            # safetensors reports a failed write (a full disk) as its own error, not OSError
            raise OSError(f"could not write {tmp / TENSORS} ({e})") from e
        with open(tmp / TENSORS, "rb+") as f:
            os.fsync(f.fileno())
        state = {
            "format": FORMAT_VERSION,
            "step": ckpt.step,
            "opt_skeleton": skeleton,
            "has_best": ckpt.best is not None,
            "rng": rng_json,
            "meta": ckpt.meta,
        }
        if rollback_skeleton is not None:
            state["rollback_opt_skeleton"] = rollback_skeleton
        _write_bytes(tmp / STATE, json.dumps(state, allow_nan=True).encode())
        manifest = {
            name: {"sha256": _sha256(tmp / name), "size": (tmp / name).stat().st_size}
            for name in (TENSORS, STATE)
        }
        _write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        if final.exists():  # a damaged checkpoint of the same step: replace it
            shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The new one and the ``keep - 1`` before it stay. A checkpoint of a later step can only be
    # one a resumed run skipped as damaged: it must not take the place of a good one (with two
    # of them, every checkpoint the resumed run wrote was deleted as soon as it was written);
    # the run replaces it when it reaches that step.
    older = [p for p in list_checkpoints(d) if int(_NAME.match(p.name).group(1)) < ckpt.step]
    for old in older[max(0, keep - 1) :]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---- reading --------------------------------------------------------------------------


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is one checkpoint (a ``ckpt-*`` folder), not a directory of them."""
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in (MANIFEST, STATE, TENSORS))


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete-looking checkpoint directories, newest (highest step) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)


def _verify(path: Path) -> str | None:
    """``None`` when the checkpoint matches its manifest, else the reason (naming the file)."""
    mf = path / MANIFEST
    if not mf.is_file():
        return f"{mf} is missing (the write did not finish)"
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        return f"{mf} is unreadable ({e})"
    for name in (TENSORS, STATE):
        f = path / name
        entry = manifest.get(name) if isinstance(manifest, dict) else None
        if not entry or not isinstance(entry, dict):
            return f"{mf} does not list {name}"
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != entry.get("size"):
            return f"{f} has {f.stat().st_size} bytes, the manifest says {entry.get('size')}"
        if _sha256(f) != entry.get("sha256"):
            return f"{f} does not match its checksum (corrupted on disk)"
    return None


def _read(path: Path) -> Checkpoint:
    from safetensors.torch import load_file

    state = json.loads((path / STATE).read_text())
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            message(
                f"checkpoint {str(path)!r}",
                f"must be format version {FORMAT_VERSION}",
                f"version {state.get('format')!r}",
                "resume with the descend version that wrote it",
            )
        )
    tensors = load_file(str(path / TENSORS))
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    best = {k[len("best/") :]: v for k, v in tensors.items() if k.startswith("best/")}
    rng: dict[str, Any] = {k[len("rng/") :]: v for k, v in tensors.items() if k.startswith("rng/")}
    rng.update(state.get("rng", {}))
    opt = unflatten_tree(state["opt_skeleton"], tensors)
    rollback = None
    if "rollback_opt_skeleton" in state:
        head = "rollback/model/"
        rollback = (
            {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)},
            unflatten_tree(state["rollback_opt_skeleton"], tensors),
        )
    pending = None
    if "metric_pending/out" in tensors and "metric_pending/target" in tensors:
        pending = (tensors["metric_pending/out"], tensors["metric_pending/target"])
    return Checkpoint(
        step=int(state["step"]),
        model=model,
        opt_state=opt,
        best=best if state.get("has_best") else None,
        meta=state["meta"],
        rng=rng,
        path=path,
        rollback=rollback,
        metric_pending=pending,
    )


def latest(directory: str | Path) -> Checkpoint | None:
    """The newest checkpoint that passes verification, or ``None`` when there is none.

    Damaged checkpoints are skipped with a warning naming the damaged file. Stale temporary
    directories from a killed writer are removed.
    """
    d = Path(directory)
    if not d.is_dir():
        return None
    _clean_temporaries(d)
    paths = list_checkpoints(d)
    for i, path in enumerate(paths):
        why = _verify(path)
        if why is None:
            try:
                return _read(path)
            except CheckpointError:
                raise
            except Exception as e:
                why = f"{path} could not be read ({type(e).__name__}: {e})"
        then = (
            "trying the one before it"
            if i + 1 < len(paths)
            else "no earlier checkpoint is left (nothing to resume from)"
        )
        warnings.warn(
            f"descend: skipping a damaged checkpoint: {why}; {then}",
            RuntimeWarning,
            stacklevel=3,  # the caller of fit(resume=...), who can act on it
        )
    return None
