"""The ``layerdrop`` command line: one table of subcommands, each a typed function.

The subcommands are :mod:`layerdrop.cli.commands`; their options and ``--help`` come from their
signatures and docstrings (:mod:`layerdrop.cli.parser`). Only this package talks to the user, and
it imports torch and transformers only inside the command that runs, so ``layerdrop --help`` starts
fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from layerdrop.config.args import build
from layerdrop.errors import InputError

from . import parser
from .commands import compare, demo, distill, elastic, exits, generate, heads, prune, report, serve, sweep, train
from .parser import Command

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, Command] = {
    "train": Command(train, ("task", "model")),
    "prune": Command(prune, ("model",)),
    "distill": Command(distill, ("teacher",)),
    "sweep": Command(sweep, ("model",)),
    "heads": Command(heads, ("model",)),
    "exits": Command(exits, ("model",)),
    "generate": Command(generate, ("model",)),
    "elastic": Command(elastic, ("model",)),
    "compare": Command(compare, ("model",)),
    "demo": Command(demo),
    "serve": Command(serve, ("model",)),
    "report": Command(report, ("pages",)),
}
"""Subcommand name -> function and positional parameters, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``layerdrop`` parser with every subcommand."""
    return parser.build_parser(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``layerdrop`` command: exit 0 on success, 2 with a one-line error on bad input
    (:class:`~layerdrop.errors.InputError`); any other exception is raised with its traceback."""
    ns = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "command"}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars; ours stay
    hf_logging.set_verbosity_error()
    try:
        threads = getattr(ns, "_threads", 0)
        if threads < 0:
            raise InputError(f"--threads {threads}: give a positive number of threads, or 0 for torch's choice")
        if threads:
            import torch

            torch.set_num_threads(threads)
        config = getattr(ns, "_config", None)
        if config is not None:
            param, cls = config
            return ns._function(**{param: build(cls, values)})
        return ns._function(**values)
    except InputError as err:  # the user's input; anything else is a bug and keeps its traceback
        print(f"layerdrop {ns.command}: error: {err}", file=sys.stderr)
        return 2

