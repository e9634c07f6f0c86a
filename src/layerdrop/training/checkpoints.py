"""Checkpoint housekeeping: a checkpoint counts as written only once it is marked complete, a run
resumes from the newest complete one, and a finished run's checkpoints give their disk back."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from transformers import TrainerCallback

from layerdrop.files import write_json

__all__ = ["CHECKPOINT_DONE", "MarkCheckpointComplete", "drop_resume_state", "last_complete_checkpoint",
           "seconds_trained"]

CHECKPOINT_DONE = "layerdrop-complete.json"
"""Written last into a checkpoint folder: only checkpoints that have it are resumed from."""


class MarkCheckpointComplete(TrainerCallback):
    """After ``Trainer`` has written a checkpoint, mark it complete (atomically), with the seconds the run
    has trained so far: ``earlier_seconds`` (the invocations before a resume, :func:`seconds_trained`) and
    this one's, so a resumed run's training time counts every invocation."""

    def __init__(self, earlier_seconds: float = 0.0) -> None:
        self.earlier_seconds = earlier_seconds
        self._began = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        self._began = time.monotonic()

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                seconds = self.earlier_seconds + time.monotonic() - self._began
                write_json(folder / CHECKPOINT_DONE, {"global_step": state.global_step,
                                                      "train_seconds": round(seconds, 1)})


def drop_resume_state(folder: str | Path) -> int:
    """Free the disk a finished run's checkpoints take: each ``checkpoint-N`` under ``folder`` keeps
    only its log (``trainer_state.json``) and is no longer complete, so nothing resumes from it.
    The run's exported model is elsewhere (``model/``). Returns the bytes freed."""
    freed = 0
    for checkpoint in Path(folder).glob("checkpoint-*"):
        (checkpoint / CHECKPOINT_DONE).unlink(missing_ok=True)  # first: a half-emptied checkpoint is never resumed
        for path in sorted(checkpoint.rglob("*"), reverse=True):  # files before the folders that hold them
            if path.name == "trainer_state.json" and path.parent == checkpoint:
                continue
            if path.is_dir():
                path.rmdir()
            else:
                freed += path.stat().st_size
                path.unlink()
    return freed


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` under ``folder`` that was completely written."""
    found = []
    for p in Path(folder).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / CHECKPOINT_DONE).is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def seconds_trained(checkpoint: str | Path | None) -> float:
    """The seconds a run had trained when ``checkpoint`` was marked complete (0 without one, or for a
    checkpoint marked before this was recorded)."""
    if checkpoint is None:
        return 0.0
    return float(json.loads((Path(checkpoint) / CHECKPOINT_DONE).read_text()).get("train_seconds", 0.0))
