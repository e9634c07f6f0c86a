"""What the server's worker runs: each job on the view of its depth, timed (the device synchronised),
with the latency profiles and the calibration kept up to date from what it measures.

The pure rules live beside it: :mod:`layerdrop.serving.latency` (a depth's predicted time, the depth
a budget allows) and :mod:`layerdrop.serving.calibration` (the margin, the overhead, forgetting).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from layerdrop.config.recipes import ServeConfig
from layerdrop.evaluation.timer import median_ms, time_ms
from layerdrop.exits.rules import lookup
from layerdrop.exits.run import early_exit

from . import calibration
from .calibration import Calibration
from .generate import generate
from .latency import Profile, fit, observe
from .served import Served
from .worker import Cancelled, Job, tell_now

if TYPE_CHECKING:
    from transformers import GenerationMixin

    from layerdrop.models.loading import Classifier

__all__ = ["Completion", "Engine", "profile_depths"]


@dataclass(frozen=True)
class Completion:
    """A completion job's settings, as the request gave them."""

    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int
    speculative: int | None
    no_repeat_ngram: int
    prompt_tokens: int
    """The prompt's length in tokens, as the request counted it."""


@torch.no_grad()
def profile_depths(served: Served, reps: int = 3) -> dict[int, Profile]:
    """Time every served depth on this machine and fit its :class:`~layerdrop.serving.latency.Profile`."""
    token = served.tokenizer.pad_token_id or 0
    lengths = sorted({min(8, served.max_length), min(32, served.max_length), min(96, served.max_length)})
    profiles = {}
    for depth, module in served.views.items():
        def forward(n: int) -> None:
            ids = torch.full((1, n), token, dtype=torch.long)  # (1, T)
            module(input_ids=ids, attention_mask=torch.ones_like(ids))  # noqa: B023 (called in this iteration)
        for n in lengths:  # warm-up: the first forward at a shape sets up its kernels
            forward(n)
        samples = [(n, median_ms(lambda: forward(n), module, reps=reps)) for n in lengths]  # noqa: B023
        per_new = 0.0
        if served.task == "generation":
            ids = torch.full((1, 8), token, dtype=torch.long)  # (1, 8)

            def greedy(new: int) -> None:
                lm = cast("GenerationMixin", module)  # noqa: B023 (called in this iteration); a causal LM's view
                lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,  # noqa: B023
                            min_new_tokens=new, do_sample=False, pad_token_id=served.tokenizer.pad_token_id)
            greedy(2)  # warm-up
            new = 8
            total = median_ms(lambda: greedy(new), module, reps=max(1, reps - 1))  # noqa: B023 (called in this iteration)
            per_new = max(0.0, (total - fit(depth, samples).predict(8)) / new)
        profiles[depth] = fit(depth, samples, per_new)
    return profiles


READING_CHARS = (1_000, 10_000, 50_000)
"""Text lengths at which reading (tokenizing) is timed at start-up."""


def profile_reading(tokenizer: Any, max_length: int, reps: int = 3) -> Profile:
    """What reading a request's text costs on this machine: tokenizing (truncated to ``max_length``) as
    a :class:`~layerdrop.serving.latency.Profile` whose tokens are characters (``depth`` 0)."""
    def read(n: int) -> None:
        tokenizer(["word " * (n // 5)], truncation=True, max_length=max_length)
    read(READING_CHARS[0])  # warm-up
    return fit(0, [(n, median_ms(lambda: read(n), reps=reps)) for n in READING_CHARS])  # noqa: B023


class Engine:
    """Runs the worker's jobs, and keeps each depth's profile and the calibration current.

    ``clock`` (seconds) stamps what is learned, so that it can be forgotten (:mod:`~layerdrop.serving.calibration`).
    """

    def __init__(self, served: Served, cfg: ServeConfig, on_stopped: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.served, self.cfg = served, cfg
        self.on_stopped = on_stopped
        """Called when a generation stops because its client left."""
        self.clock = clock
        self.profiles: dict[int, Profile] = {}
        """Each depth's profile as last observed (see :meth:`current_profiles` for what predictions use)."""
        self.startup_profiles: dict[int, Profile] = {}
        """Each depth's profile as measured at start-up: where the learned ones return without news."""
        self.observed_at: dict[int, float] = {}
        self.reading = self.startup_reading = Profile(0, 0.0, 0.0)
        """What reading a text costs, per character (:func:`profile_reading`): as last observed, and at start-up."""
        self.read_at = float("-inf")
        self.calibration = Calibration()
        self._lock = threading.Lock()

    def startup(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        profiles = profile_depths(self.served, self.cfg.profile_reps)
        reading = profile_reading(self.served.tokenizer, self.served.max_length, self.cfg.profile_reps)
        with self._lock:
            self.profiles, self.startup_profiles = profiles, dict(profiles)
            self.reading = self.startup_reading = reading

    # ----------------------------------------------------------------------- what the server has learned

    def current_profiles(self) -> dict[int, Profile]:
        """The profiles predictions use now: each observed one relaxing toward start-up without news."""
        now = self.clock()
        with self._lock:
            return {d: calibration.relaxed(p, self.startup_profiles[d], now - self.observed_at[d])
                    if d in self.observed_at and d in self.startup_profiles else p for d, p in self.profiles.items()}

    def _reading_at(self, now: float) -> Profile:
        """The reading profile in force at ``now``: as last observed, relaxing toward start-up without news."""
        return calibration.relaxed(self.reading, self.startup_reading, now - self.read_at)

    def reading_ms(self, chars: int) -> float:
        """Predicted milliseconds to read (tokenize) ``chars`` characters of input."""
        return self._reading_at(self.clock()).predict(chars)

    def observe_reading(self, chars: int, ms: float) -> None:
        now = self.clock()
        with self._lock:
            self.reading, self.read_at = observe(self._reading_at(now), chars, 0, ms), now

    @property
    def overhead_ms(self) -> float:
        return calibration.overhead_ms(self.calibration, self.clock())

    @property
    def ratios(self) -> dict[int, list[float]]:
        """The fresh measured/predicted ratios, by requests found ahead
        (:data:`~layerdrop.serving.calibration.AHEAD_MAX` or more together)."""
        return calibration.fresh_ratios(self.calibration, self.clock())

    def budget_margin(self, ahead: int = 0) -> float:
        return calibration.budget_margin(self.calibration, ahead, self.clock())

    def observe_overhead(self, ms: float) -> None:
        with self._lock:
            self.calibration = calibration.observe_overhead(self.calibration, ms, self.clock())

    def observe_answer(self, predicted_ms: float, measured_ms: float, ahead: int = 0) -> None:
        with self._lock:
            self.calibration = calibration.observe_answer(self.calibration, predicted_ms, measured_ms, ahead,
                                                          self.clock())

    def observe(self, depth: int, tokens: int, new_tokens: int, ms: float) -> None:
        current = self.current_profiles()[depth]
        with self._lock:
            self.profiles = {**self.profiles, depth: observe(current, tokens, new_tokens, ms)}
            self.observed_at[depth] = self.clock()

    # ----------------------------------------------------------------------- running

    @torch.no_grad()
    def run(self, jobs: Sequence[Job]) -> list[Any]:
        depth = jobs[0].depth
        module = self.served.views[depth]
        if jobs[0].kind == "classify":  # payloads are token ids, tokenized (and charged) by the request
            ids = [row for job in jobs for row in job.payload]
            batch = self.served.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
            tokens = int(batch["input_ids"].numel())
            threshold = jobs[0].threshold
            stages = [s for s in self.served.exit_stages if s.depth <= depth] if threshold is not None else []
            if stages:  # early exit up to the deepest exit the budget allows; no one depth's time: not observed
                assert self.served.exits is not None and threshold is not None  # exit_stages come with exits
                exited = early_exit(cast("Classifier", self.served.model), batch, stages,
                                    lookup(self.served.exits.rule), threshold, on_leave=_answer_when_left(jobs, tokens))
                probs, depths = exited.logits.softmax(-1), exited.depth.tolist()  # (B, C), (B,)
            else:
                out: list[torch.Tensor] = []
                ms = time_ms(lambda: out.append(module(**batch).logits.float().softmax(-1)), module)  # (B, C)
                self.observe(depth, tokens, 0, ms)
                probs, depths = out[0], [depth] * len(ids)
            results, i = [], 0
            for job in jobs:
                results.append((probs[i:i + job.size].tolist(), tokens, depths[i:i + job.size]))
                i += job.size
            return results
        (job,) = jobs
        c: Completion = job.payload

        def on_text(text: str) -> None:
            if job.cancelled.is_set():
                raise Cancelled("the client went away")
            if text and job.on_text is not None:
                job.on_text(text)
        done: list[Any] = []
        try:
            ms = time_ms(lambda: done.append(generate(
                module, self.served.tokenizer, c.prompt, max_new_tokens=c.max_tokens, temperature=c.temperature,
                top_p=c.top_p if c.temperature > 0 else None, stop=c.stop, seed=c.seed, on_text=on_text,
                speculative=c.speculative, no_repeat_ngram=c.no_repeat_ngram)), module)
        except Cancelled:
            if self.on_stopped is not None:
                self.on_stopped()
            raise
        result = done[0]
        self.observe(depth, c.prompt_tokens, result.new_tokens, ms)
        return [result]


def _answer_when_left(jobs: Sequence[Job], tokens: int) -> Callable[[torch.Tensor, torch.Tensor, int], None]:
    """An ``on_leave`` for :func:`layerdrop.exits.early_exit` that answers each job of a batch as soon as all
    its inputs have left (a request whose text left at depth 3 does not wait for another's to reach 12)."""
    starts = [sum(job.size for job in jobs[:j]) for j in range(len(jobs))]
    probs: dict[int, list[float]] = {}
    depths: dict[int, int] = {}

    def on_leave(rows: torch.Tensor, logits: torch.Tensor, depth: int) -> None:
        for row, p in zip(rows.tolist(), logits.float().softmax(-1).tolist(), strict=True):
            probs[row], depths[row] = p, depth
        for job, start in zip(jobs, starts, strict=True):
            mine = range(start, start + job.size)
            if not job.told.is_set() and all(r in probs for r in mine):
                tell_now(job, ([probs[r] for r in mine], tokens, [depths[r] for r in mine]))
    return on_leave
