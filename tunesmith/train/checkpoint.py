"""Atomic checkpoints and exact resume, without pickle.

A checkpoint is written with `tunesmith.files.atomic_dir` (a temporary folder, every file fsynced, renamed into
place): a crash at any moment leaves either the previous complete checkpoint or the new complete one, never half of
one. It holds everything that decides the rest of the run: trained weights, optimizer and scheduler state, every
RNG, the position in the (deterministic) stream of micro-batches, and the run's counters.

Nothing in it is a pickle: people share run folders, and unpickling one runs whatever code it names. Tensors go to
safetensors files; everything else (hyperparameters, step counts, the Python and NumPy RNG states) to JSON, with the
tensors referred to by name. Reading it back can only ever produce tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunesmith.files import TMP_PREFIX, atomic_dir, atomic_write_json, read_json
from tunesmith.records import DataError, TunesmithError

PREFIX = "step-"
WEIGHTS = "trainable.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"  # optimizer moments, torch RNG states
OPTIMIZER_JSON = "optimizer.json"  # the rest of optimizer, scheduler and RNG state; tensors named into the file above
STATE = "state.json"  # step, counters, data fingerprint, hook state
LEGACY_PICKLE = "optimizer.pt"  # what versions before 0.1 wrote: never read


class CheckpointError(TunesmithError):
    pass


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- state trees without pickle: tensors to safetensors, the rest to JSON ----
# Tagged JSON objects stand for what JSON lacks. Written by hand: safetensors stores only tensors, and torch's own
# formats are pickles; the trees here are small (optimizer hyperparameters, scheduler counters, RNG states).

def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of `obj`; every tensor is moved into `tensors` under its path and referred to by it."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[_json_key(k, path), encode_tree(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} (at {path or 'the top'}) in a checkpoint without pickle")


def _json_key(key: Any, path: str) -> Any:
    if key is None or isinstance(key, (bool, int, float, str)):
        return key
    raise TypeError(f"cannot store a dict key of type {type(key).__name__} (at {path}) in a checkpoint")


def decode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode_tree`."""
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: decode_tree(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_tree(v, tensors) for k, v in obj.items()}


# ---- checkpoints ----

def save_checkpoint(directory: Path, step: int, model, optimizer, scheduler, state: dict, keep_last: int) -> Path:
    final = directory / f"{PREFIX}{step:07d}"
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_tree({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                       tensors)
    with atomic_dir(final) as tmp:
        save_file(trainable_state(model), tmp / WEIGHTS)
        save_file(tensors, tmp / OPTIMIZER_TENSORS)
        atomic_write_json(tmp / OPTIMIZER_JSON, tree, indent=None)
        atomic_write_json(tmp / STATE, {**state, "step": step})
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `.tmp-` folder is one whose write was cut short: never listed)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE).exists())


def remove_unfinished(directory: Path) -> list[Path]:
    """Delete what writes cut short by a crash left in `directory` (temporary files and folders); returns them."""
    if not directory.is_dir():
        return []
    leftovers = [p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def read_state(path: Path) -> dict:
    """A checkpoint's state.json (step, counters, data fingerprint, hook state)."""
    try:
        state = read_json(path / STATE)
    except DataError as e:
        raise _damaged(path, str(e.issues[0])) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise _damaged(path, f"{path / STATE} has no step")
    return state


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Weights, optimizer, scheduler and RNGs from a checkpoint into the given objects; returns its state.json."""
    state = read_state(path)
    if not (path / OPTIMIZER_JSON).exists() and (path / LEGACY_PICKLE).exists():
        raise CheckpointError(
            f"{path} keeps the optimizer state in {LEGACY_PICKLE}, a pickle (the format of an older tunesmith). "
            "tunesmith never unpickles a run folder, as a pickle can run any code. Start the run again (without "
            "--resume, in another output.dir), or resume from a checkpoint written by this version.")
    try:
        weights = load_file(path / WEIGHTS)
        tensors = load_file(path / OPTIMIZER_TENSORS)
        tree = read_json(path / OPTIMIZER_JSON)
        blob = decode_tree(tree, tensors)
        params = dict(model.named_parameters())
        unknown = [n for n in weights if n not in params]
        if unknown:
            raise CheckpointError(f"checkpoint {path} has weights the model lacks: {unknown[:3]}; was it written by "
                                  "another method or model?")
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        restore_rng(blob["rng"])
    except CheckpointError:
        raise
    except DataError as e:
        raise _damaged(path, str(e.issues[0])) from None
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise _damaged(path, f"{type(e).__name__}: {e}") from None
    return state


def _damaged(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is damaged ({detail}). Delete that folder to resume from the one "
                           "before it, or start the run again.")


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None
