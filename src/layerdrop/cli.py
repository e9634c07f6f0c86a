"""The ``layerdrop`` command line: one typed function per subcommand.

Each subcommand is a plain function. Its parameters become options (a
parameter that is a frozen dataclass expands into one option per field), and
``--help`` text comes from its docstring and the fields' docstrings. Only this
module talks to the user.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .demo import DemoConfig
    from .elastic import ElasticConfig
    from .sweep import SweepConfig
    from .train import TrainConfig

__all__ = ["main"]


# --------------------------------------------------------------------------- subcommands


def train(config: TrainConfig) -> int:
    """Fine-tune or pre-train a model with LayerDrop, then evaluate and export it.

    TASK is classification, mlm or clm. MODEL is a local folder, a bundled model
    (minilm-l6, smollm2-135m) or a from-scratch preset (bert-tiny, gpt2-tiny, ...).

    Examples:
      layerdrop train classification minilm-l6 --data rotten-tomatoes --out runs/rt --rate 0.2
      layerdrop train classification minilm-l6 --data 20newsgroups --long-doc mean --out runs/ng
      layerdrop train clm gpt2-tiny --data kjv --out runs/kjv --rate 0.5 --schedule progressive
    """
    from .train import run

    result = run(config)
    if not result.main_process:  # launched on several ranks: rank 0 reports
        return 0
    where = f"resumed from {result.resumed_from.name}, " if result.resumed_from else ""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    print(f"done: {config.task} {config.model} on {config.data}, {result.steps} steps, {where}"
          f"{result.seconds:.0f} s; {shown}")
    print(f"model: {result.model_dir}")
    return 0


def demo(config: DemoConfig) -> int:
    """Show LayerDrop against plain training at every depth, offline, on a real model and real data.

    (a) fine-tunes MiniLM-L6 on Rotten Tomatoes without and with LayerDrop and
    prunes both to every depth; (b) trains a small GPT-2-style LM on the King
    James Bible without and with LayerDrop; (c) writes plots, a Markdown report
    and pruned checkpoints to --out. About 15 minutes on 2 CPU cores; --full runs
    the full-size quality-bar experiment instead.
    """
    from .demo import run_demo

    result = run_demo(config, log=print)
    for name, table in result.tables.items():
        print(f"\n{name}:\n{table}")
    print(f"report: {result.report}  ({result.seconds / 60:.1f} min)")
    return 0


def sweep(config: SweepConfig) -> int:
    """Measure quality, latency and parameters at every depth for each layer-choice strategy.

    MODEL is a saved classifier (accuracy) or causal LM (perplexity); --data is
    scored on its validation split. Writes sweep.csv, sweep.json, sweep.md and
    PNG plots (quality against depth, against latency with the Pareto front,
    and per-layer importance) to --out.

    Example:
      layerdrop sweep runs/rt/model --data rotten-tomatoes --strategies every-other,search,block-influence --out runs/rt-sweep
    """
    from .sweep import run_sweep

    result = run_sweep(config)
    print(result.table)
    print(f"sweep: {result.out / 'sweep.md'}")
    return 0


def generate(model: str, prompt: str, depth: int | None = None, max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             stop: str | None = None, seed: int = 0, speculative: int | None = None,
             draft_tokens: int = 4) -> int:
    """Generate text with a causal LM cut to --depth layers, streaming tokens as they come.

    With --speculative K, a K-layer sub-network of the model (the same weights)
    drafts tokens and all layers verify them: the text is exactly the greedy
    text of the model, and the speed and the acceptance rate are printed after it.

    Args:
        model: Model folder, bundled name (smollm2-135m) or hub name of a causal LM.
        prompt: Text to continue.
        depth: Layers to run (every-other); all layers if omitted.
        max_new_tokens: Most tokens to generate.
        temperature: 0 is greedy decoding; above 0 samples.
        top_k: Sample from the k most likely tokens (with --temperature).
        top_p: Sample from the smallest set of tokens with this probability mass (with --temperature).
        stop: Comma-separated strings that end generation.
        seed: Seed of sampling.
        speculative: Self-speculative decoding with a draft of this many (every-other) layers; greedy only.
            With --depth D too, the draft is K layers of the D-layer model, and the text is that model's.
        draft_tokens: Tokens the draft proposes per verification (with --speculative).
    """
    from transformers import AutoTokenizer

    from .generate import generate as run
    from .models import load_saved, local_folder

    lm = load_saved(model)
    tokenizer = AutoTokenizer.from_pretrained(local_folder(model))
    print(prompt, end="", flush=True)
    result = run(lm, tokenizer, prompt, depth=depth, max_new_tokens=max_new_tokens, temperature=temperature,
                 top_k=top_k, top_p=top_p, stop=[s for s in (stop or "").split(",") if s], seed=seed,
                 on_text=lambda text: print(text, end="", flush=True), speculative=speculative,
                 draft_tokens=draft_tokens)
    print()
    note = " (prompt truncated to fit the context)" if result.prompt_truncated else ""
    if result.draft_depth is not None:
        note += (f"; speculative: draft of {result.draft_depth} layers, {result.accepted} of {result.drafted} "
                 f"drafted tokens accepted ({100 * result.acceptance_rate:.0f} %)")
    print(f"[{result.new_tokens} tokens at depth {result.depth}, {result.tokens_per_second:.1f} tokens/s{note}]",
          file=sys.stderr)
    return 0


def prune(model: str, out: str, depth: int | None = None, keep: str | None = None,
          strategy: str = "every-other", data: str | None = None, rows: int = 500) -> int:
    """Cut a saved model to fewer layers and write a plain Hugging Face checkpoint.

    Also writes layerdrop.json: the kept layers, the strategy and how it chose,
    the parameters before and after, and the validation quality when --data is
    given. A classifier saved by `layerdrop train` keeps its head.

    Args:
        model: Model folder (or bundled model name) to prune.
        out: Output folder; written atomically.
        depth: Number of layers to keep, chosen by --strategy.
        keep: Comma-separated 0-based layer indices to keep instead, e.g. 0,2,5.
        strategy: every-other, search, block-influence, angular, top or data-driven (search and the importance metrics need --data; data-driven needs a model trained with --data-driven).
        data: Dataset name or file: the validation split scores the choice (and calibrates the importance metrics).
        rows: Validation rows used with --data.
    """
    from .prune import prune_saved

    try:
        indices = None if keep is None else [int(x) for x in keep.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--keep takes comma-separated integers like 0,2,5, got {keep!r}") from None
    record = prune_saved(model, out, depth=depth, keep=indices, strategy=strategy, data=data, rows=rows)
    quality = {k: v for k, v in record.items() if k.startswith("validation_")}
    shown = "".join(f", {k.removeprefix('validation_')} {v:.4g}" for k, v in quality.items())
    print(f"kept layers {record['kept_layers']} of {record['original_num_layers']} ({record['strategy']}): "
          f"{record['parameters_before'] / 1e6:.2f}M -> {record['parameters_after'] / 1e6:.2f}M parameters{shown}")
    print(f"model: {out}")
    return 0


# --------------------------------------------------------------------------- argparse from signatures


def elastic(config: ElasticConfig) -> int:
    """Make a pretrained decoder depth-elastic: continue its training with LayerDrop.

    Scores perplexity at --depths (every-other layers), continues causal-LM
    training on --data with LayerDrop (self-distilled by default), and scores
    the same depths again; writes report.md, results.json and the model to --out.
    The defaults (SmolLM2-135M on the King James Bible) are the recipe measured
    in docs/results.md.

    Examples:
      layerdrop elastic --out runs/smollm2-elastic
      layerdrop elastic runs/kjv/model --depths 6,3 --steps 300 --out runs/kjv-elastic
    """
    from .elastic import run_elastic

    result = run_elastic(config, log=print)
    print(f"\n{result.table}")
    print(f"report: {result.report}  (training {result.train_seconds / 60:.1f} min)")
    return 0


def _train_config() -> type:
    from .train import TrainConfig

    return TrainConfig


def _sweep_config() -> type:
    from .sweep import SweepConfig

    return SweepConfig


def _elastic_config() -> type:
    from .elastic import ElasticConfig

    return ElasticConfig


def _demo_config() -> type:
    from .demo import DemoConfig

    return DemoConfig


COMMANDS: dict[str, Callable[..., int]] = {
    "train": train, "prune": prune, "sweep": sweep, "generate": generate, "elastic": elastic, "demo": demo,
}
POSITIONAL: dict[str, tuple[str, ...]] = {
    "train": ("task", "model"), "prune": ("model",), "sweep": ("model",), "generate": ("model",),
    "elastic": ("model",),
}
DATACLASSES: dict[str, Callable[[], type]] = {
    "TrainConfig": _train_config, "SweepConfig": _sweep_config, "DemoConfig": _demo_config,
    "ElasticConfig": _elastic_config,
}
"""Dataclass parameters, by annotation; imported lazily so ``--help`` stays fast."""


def _arg_docs(func: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into the text and per-argument help."""
    doc = inspect.getdoc(func) or ""
    text, _, args = doc.partition("\nArgs:\n")
    helps: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        stripped = line.strip()
        if line.startswith("    ") and not line.startswith("        ") and ":" in stripped:
            name, _, rest = stripped.partition(":")
            helps[name] = rest.strip()
        elif name and stripped:
            helps[name] += " " + stripped
    return text.strip(), helps


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).replace("``", "").split())  # type: ignore[attr-defined]
    return docs


def _option(parser: argparse.ArgumentParser, name: str, hint: Any, default: Any, help_: str,
            positional: bool) -> None:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    required = default is inspect.Parameter.empty or default is dataclasses.MISSING
    flag = name if positional else "--" + name.replace("_", "-")
    help_ = help_.replace("%", "%%")  # argparse %-formats help text
    kwargs: dict[str, Any] = {"help": help_}
    if hint is bool:
        kwargs.update(action=argparse.BooleanOptionalAction, default=default)
    else:
        kwargs.update(type=hint, metavar=name.upper() if not positional else None)
        if positional:
            kwargs.pop("metavar")
            if not required:  # an optional positional: `layerdrop elastic` uses the default model
                kwargs.update(nargs="?", default=default)
                kwargs["help"] = f"{help_} (default: {default})"
        elif required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None and not optional:
                kwargs["help"] = f"{help_} (default: {default})"
    if not positional:
        kwargs["dest"] = name
    parser.add_argument(flag, **kwargs)


def _add_command(sub: Any, name: str, func: Callable[..., int]) -> None:
    text, helps = _arg_docs(func)
    summary = text.splitlines()[0] if text else name
    parser = sub.add_parser(name, help=summary, description=text,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    for param in inspect.signature(func).parameters.values():
        if param.annotation in DATACLASSES:
            cls = DATACLASSES[param.annotation]()
            hints = typing.get_type_hints(cls)
            fdocs = _field_docs(cls)
            for field in dataclasses.fields(cls):
                _option(parser, field.name, hints[field.name], field.default, fdocs.get(field.name, ""),
                        field.name in POSITIONAL.get(name, ()))
            parser.set_defaults(_build={param.name: cls})
        else:
            hints = typing.get_type_hints(func)
            _option(parser, param.name, hints[param.name], param.default, helps.get(param.name, ""),
                    param.name in POSITIONAL.get(name, ()))
    parser.set_defaults(_func=func)


def build_parser() -> argparse.ArgumentParser:
    """The ``layerdrop`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="layerdrop",
        description="LayerDrop: train a transformer once, prune it to any depth without retraining.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func in COMMANDS.items():
        _add_command(sub, name, func)
    return parser


def _call(ns: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "command"}
    func = ns._func
    build = getattr(ns, "_build", None)
    if build:
        (param, cls), = build.items()
        names = {f.name for f in dataclasses.fields(cls)}
        return func(**{param: cls(**{k: v for k, v in values.items() if k in names})})
    return func(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``layerdrop`` command."""
    ns = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars; ours stay
    hf_logging.set_verbosity_error()
    try:
        return _call(ns)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"layerdrop {ns.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

