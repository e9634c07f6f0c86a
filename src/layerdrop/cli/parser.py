"""``argparse`` from signatures: a subcommand's parameters become options, and its ``--help`` comes from
its docstring.

A parameter typed as a config dataclass (:mod:`layerdrop.config.args`) becomes one flat option per
leaf field, with that field's docstring as help; a field that is itself a dataclass is a group whose
fields are flattened the same way (``--rate``, not ``--layerdrop.rate``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RUN_MODELS", "Command", "build_parser"]


@dataclasses.dataclass(frozen=True)
class Command:
    """One row of :data:`layerdrop.cli.COMMANDS`."""

    function: Callable[..., int]
    """The typed function that runs it; its docstring is the help."""
    positional: tuple[str, ...] = ()
    """Parameters (or config fields) given by position rather than as ``--flags``."""


def _arg_docs(func: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into the text and per-argument help."""
    text, _, args = (inspect.getdoc(func) or "").partition("\nArgs:\n")
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
    """The docstrings written under a dataclass's fields."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(tree, ast.ClassDef)  # the source of a class
    body = tree.body
    return {node.target.id: " ".join(str(nxt.value.value).replace("``", "").split())
            for node, nxt in zip(body, body[1:], strict=False)  # each node with the next
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)  # a field: `name: type`
            and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)}


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One option: a parameter, or a leaf field of a config dataclass."""

    name: str
    hint: Any
    default: Any
    help: str
    group: str | None = None
    """The title of the group dataclass it belongs to, shown as a section of ``--help``."""


def _leaves(cls: type, group: str | None = None) -> list[_Leaf]:
    """A config dataclass's options, with the fields of nested (group) dataclasses flattened."""
    hints, docs = typing.get_type_hints(cls), _field_docs(cls)
    out: list[_Leaf] = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            summary = (inspect.getdoc(kind) or field.name).split("\n\n")[0]  # its first paragraph, joined
            title = " ".join(summary.split()).replace("``", "").rstrip(".")
            out.extend(_leaves(kind, title))
        else:
            out.append(_Leaf(field.name, kind, field.default, docs.get(field.name, ""), group))
    return out


def _add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, leaf: _Leaf, positional: bool) -> None:
    hint, optional = leaf.hint, False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint, optional = next(a for a in typing.get_args(hint) if a is not type(None)), True
    required = leaf.default in (inspect.Parameter.empty, dataclasses.MISSING)
    help_ = leaf.help.replace("%", "%%")  # argparse %-formats help text
    shown = "" if required or (leaf.default is None and optional) else f" (default: {leaf.default})"
    if hint is bool:
        parser.add_argument("--" + leaf.name.replace("_", "-"), dest=leaf.name, help=help_,
                            action=argparse.BooleanOptionalAction, default=leaf.default)
    elif typing.get_origin(hint) is list:  # one or more values: `layerdrop report PAGE...`
        parser.add_argument(leaf.name, type=typing.get_args(hint)[0], nargs="+", help=help_)
    elif positional:  # an optional positional: `layerdrop elastic` uses the default model
        extra = {} if required else {"nargs": "?", "default": leaf.default}
        parser.add_argument(leaf.name, type=hint, help=help_ + shown, **extra)
    else:
        extra = {"required": True} if required else {"default": leaf.default}
        metavar = leaf.name.upper()
        if typing.get_origin(hint) is typing.Literal:  # a choice: --help lists them, argparse's error names them
            hint, extra = str, {**extra, "choices": typing.get_args(hint)}
            metavar = "{" + ",".join(extra["choices"]) + "}"
        parser.add_argument("--" + leaf.name.replace("_", "-"), dest=leaf.name, type=hint,
                            metavar=metavar, help=help_ + shown, **extra)


def _add_command(sub: Any, name: str, command: Command) -> None:
    text, helps = _arg_docs(command.function)
    parser = sub.add_parser(name, help=text.splitlines()[0], description=text,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(command.function)
    for param in inspect.signature(command.function).parameters.values():
        hint = hints[param.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            leaves = _leaves(hint)
            parser.set_defaults(_config=(param.name, hint))
        else:
            leaves = [_Leaf(param.name, hint, param.default, helps.get(param.name, ""))]
        sections: dict[str | None, Any] = {None: parser}
        for leaf in leaves:
            if leaf.group not in sections:
                sections[leaf.group] = parser.add_argument_group(leaf.group)
            _add_option(sections[leaf.group], leaf, leaf.name in command.positional)
    if name in RUN_MODELS:
        parser.add_argument("--threads", dest="_threads", type=int, default=0, metavar="N",
                            help="torch threads for this command (default: 0, torch's own choice, one per core); "
                                 "on a small machine under load, fewer threads can be several times faster")
    parser.set_defaults(_function=command.function)


RUN_MODELS = ("train", "prune", "distill", "sweep", "exits", "heads", "generate", "elastic", "compare", "demo")
"""Subcommands that run models, and so take ``--threads`` (``serve`` has its own, for its worker)."""


def build_parser(commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    """The ``layerdrop`` parser with a subcommand for each of ``commands``."""
    parser = argparse.ArgumentParser(
        prog="layerdrop",
        description="LayerDrop: train a transformer once, prune it to any depth without retraining.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        _add_command(sub, name, command)
    return parser


