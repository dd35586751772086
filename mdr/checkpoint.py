"""A run's checkpoints: read without trusting them, written so that a good one always remains.

  checkpoint.pt       everything needed to continue the run, written after every epoch
  checkpoint.prev.pt  the epoch before: renamed from checkpoint.pt just before a new one is written, so
                      a damaged checkpoint.pt (or an interruption between the two steps) leaves an epoch
                      to continue from
  best.pt             the weights of the best epoch

Every file is read with torch.load(weights_only=True): tensors and plain data only, so a crafted file
put in a run folder (a shared runs/ on a cluster, a downloaded run) is refused instead of running its
pickle payload. Its configuration fingerprint is checked before anything else in it is used.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mdr.io import DamagedFileError, atomic_torch_save, read_json

if TYPE_CHECKING:
    import torch

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
BEST = "best.pt"
DAMAGED = "checkpoint.damaged.pt"  # where a damaged checkpoint.pt is set aside when the run goes on without it
HISTORY = "history.json"  # a copy of the checkpoint's history, rewritten from it whenever training resumes
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
CHECKPOINT_KEYS = ("epoch", "model", "loss", "regularizer", "optimizer", "scheduler", "history")
BEST_KEYS = ("epoch", "model", "loss", "regularizer")


class CheckpointMismatchError(RuntimeError):
    """A run folder holds a checkpoint of a different configuration."""


class UnusableCheckpointError(DamagedFileError):
    """A checkpoint that cannot be read (damaged) or must not be (it holds more than tensors and plain data).
    `problem` names the file and what is wrong with it; the message adds what to do."""

    def __init__(self, problem: str, remedy: str, path: Path, untrusted: bool):
        super().__init__(f"{problem}; {remedy}")
        self.problem, self.path, self.untrusted = problem, path, untrusted


def load(path: Path, fingerprint: str, device: torch.device | str, keys: tuple[str, ...], remedy: str) -> dict[str, Any]:
    """The checkpoint in `path` if it is one of this configuration; `remedy` ends the message when it
    is damaged or refused. A missing file raises FileNotFoundError."""
    import torch  # here, so that reading a history (mdr.tracking, mdr.figures) does not import torch

    if not path.exists():
        raise FileNotFoundError(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError:  # the file could not be read at all (permissions, I/O): nothing is known of its content
        raise
    except Exception as e:  # truncated archive (RuntimeError), empty file (EOFError), foreign bytes, a payload
        # torch's restricted reader names the GLOBAL (a class or function: os.system, ...) that a pickle asks
        # for, which is how a payload runs; everything else it refuses is foreign or damaged bytes.
        asked = _GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if asked:
            raise UnusableCheckpointError(
                f"{path} was not loaded: it holds objects other than tensors and plain data (it asks for "
                f"{asked.group(1)}), which could run code when loaded (a checkpoint written by this project never "
                f"does); it is left as is", f"delete it unless you know where it came from, then {remedy}", path,
                untrusted=True) from None
        raise _damaged(path, _describe(e), remedy) from None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
        raise _damaged(path, "no configuration fingerprint in it", remedy)
    if state["fingerprint"] != fingerprint:
        raise CheckpointMismatchError(
            f"{path} belongs to a different configuration (fingerprint {state['fingerprint']}, this run is "
            f"{fingerprint}); it was kept as is. Move it away to start afresh.")
    missing = [k for k in keys if k not in state]
    if missing:
        raise _damaged(path, f"no {', '.join(missing)} in it", remedy)
    return state


def _describe(e: Exception) -> str:
    """torch's reason in a few words: it goes on for sentences about what may have caused it."""
    message = str(e)
    operand = re.search(r"Unsupported operand \d+", message)  # the restricted reader, on bytes it cannot read
    if operand:
        return f"not a PyTorch checkpoint: {operand.group(0)}"
    if isinstance(e, KeyError):  # torch's legacy reader, on bytes that are neither a zip archive nor a pickle
        return f"not a PyTorch checkpoint: KeyError {message}"
    return f"{type(e).__name__}: {message.splitlines()[0].split('. ')[0] if message else 'file ends early'}"


def _damaged(path: Path, reason: str, remedy: str) -> UnusableCheckpointError:
    return UnusableCheckpointError(f"{path} is damaged ({reason})", remedy, path, untrusted=False)


def resume_state(run_dir: Path, fingerprint: str, device: torch.device | str,
                 warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint to continue the run from, or None to start at epoch 1: checkpoint.pt, else
    checkpoint.prev.pt when checkpoint.pt is missing or damaged (a damaged one is set aside as
    checkpoint.damaged.pt, so that the next rotation does not replace the good previous one with it)."""
    current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    again = f"train the run again: it goes on from {PREVIOUS} when there is one, else from epoch 1"
    if current.exists():
        try:
            return load(current, fingerprint, device, CHECKPOINT_KEYS, again)
        except UnusableCheckpointError as e:
            if e.untrusted:
                raise
            if not previous.exists():
                raise UnusableCheckpointError(e.problem, f"there is no {PREVIOUS} to go on from: delete it to train "
                                              f"the run from epoch 1", current, untrusted=False) from None
            os.replace(current, run_dir / DAMAGED)
            warn(f"{e.problem}; set aside as {run_dir / DAMAGED}, going on from {previous}")
    if previous.exists():
        return load(previous, fingerprint, device, CHECKPOINT_KEYS,
                    f"delete it (and {current}, if any) to train the run from epoch 1")
    return None


def save(state: dict[str, Any], run_dir: Path) -> None:
    """Write checkpoint.pt, keeping the one it replaces as checkpoint.prev.pt."""
    current = run_dir / CHECKPOINT
    if current.exists():
        os.replace(current, run_dir / PREVIOUS)
    atomic_torch_save(state, current)


def best_problem(run_dir: Path, fingerprint: str, device: torch.device | str, best_epoch: int,
                 resumed_epoch: int) -> str | None:
    """Why best.pt cannot be the weights of `best_epoch` (1-based) of a run resumed after `resumed_epoch`,
    or None when it can. A best.pt newer than the checkpoint is fine: it was written just before an
    interruption, and the epochs that rerun write it again. A crafted best.pt raises."""
    path = run_dir / BEST
    try:
        best = load(path, fingerprint, device, BEST_KEYS, "train the run again: it rebuilds best.pt")
    except FileNotFoundError:
        return f"{path} is missing"
    except UnusableCheckpointError as e:
        if e.untrusted:
            raise
        return e.problem
    epoch = int(best["epoch"]) + 1
    if epoch == best_epoch or epoch > resumed_epoch:
        return None
    return f"{path} holds epoch {epoch}, not the best epoch {best_epoch}"


def train_again(run_dir: Path, what: str) -> str:
    """Advice to train a run of runs/<profile>/<run-id> again, which does `what` (see mdr.engine.train)."""
    return (f"train the run again (python -m pipeline train --profile {run_dir.parent.name} --run {run_dir.name}, "
            f"or the stage that trained it): {what}")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of history.json ([] when there is none yet); a damaged one raises DamagedFileError."""
    path = run_dir / HISTORY
    if not path.exists():
        return []
    return read_json(path, train_again(run_dir, f"it rewrites {HISTORY} from the checkpoint"))
