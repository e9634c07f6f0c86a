"""Every call the README and docs show works: each dotted ``layerdrop.…`` name resolves, each import
statement imports, and the Python blocks that need only a model run on a tiny one (issue 29, defect 1:
``layerdrop.prune.view`` was documented and failed)."""

from __future__ import annotations

import importlib
import re
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import layerdrop
from conftest import Custom, make

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "README.zh-CN.md", *(ROOT / "docs").glob("*.md")])
NAME = re.compile(r"(?<![\w./-])layerdrop(?:\.[A-Za-z_]\w*)+")
FILES = {"json", "safetensors", "png", "md", "txt", "html"}
"""Endings that make ``layerdrop.X`` a file name (``layerdrop.json``), not a Python name."""


def _blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    obj: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))  # a submodule not imported yet
    return obj


def _names() -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for name in NAME.findall(page.read_text()):
            if name.rsplit(".", 1)[1] not in FILES:
                found.add((page.relative_to(ROOT).as_posix(), name))
    return sorted(found)


@pytest.mark.parametrize("page, name", _names())
def test_every_dotted_name_in_the_docs_resolves(page, name):
    assert _resolve(name) is not None, f"{page} names {name}"


def _imports() -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for block in _blocks(page):
            for line in block.splitlines():
                if re.match(r"(from layerdrop[\w.]* import |import layerdrop)", line):
                    found.add((page.relative_to(ROOT).as_posix(), line.split("#")[0].strip()))
    return sorted(found)


@pytest.mark.parametrize("page, statement", _imports())
def test_every_import_in_the_docs_imports(page, statement):
    exec(statement, {})


def _six_layers() -> torch.nn.Module:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=6,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=2))


def _block(page: str, containing: str) -> str:
    (block,) = [b for b in _blocks(ROOT / page) if containing in b]
    return block


@pytest.mark.parametrize("page", ["README.md", "README.zh-CN.md"])
def test_the_readmes_quick_start_trains_the_served_depths_and_cuts_one(page, tmp_path):
    _six_layers().save_pretrained(tmp_path / "model")
    code = _block(page, "output_kd_loss(sub, full").replace('"out/"', repr(str(tmp_path / "out")))
    rows = [(torch.randint(3, 99, (4, 7)), torch.randint(0, 2, (4,))) for _ in range(3)]
    loader = [{"input_ids": ids, "labels": labels} for ids, labels in rows]
    space: dict = {"path": str(tmp_path / "model"), "loader": loader}
    before: dict = {}

    class Optimizer:  # the block's optimizer: SGD over the model it loads, made at the first step
        sgd: torch.optim.SGD | None = None

        def step(self):
            if self.sgd is None:
                before.update({k: v.detach().clone() for k, v in space["model"].state_dict().items()})
                self.sgd = torch.optim.SGD(space["model"].parameters(), lr=0.1)
            self.sgd.step()

        def zero_grad(self):
            space["model"].zero_grad()

    space["optimizer"] = Optimizer()
    exec(code, space)
    small = space["small"]
    assert len(layerdrop.find_layers(small).layers) == 3
    assert (tmp_path / "out" / "config.json").is_file()
    trained = space["model"].state_dict()
    assert not torch.equal(trained["bert.encoder.layer.5.output.dense.weight"],
                           before["bert.encoder.layer.5.output.dense.weight"])  # the full network learns
    small.eval(), space["model"].eval()
    with layerdrop.only_layers(space["model"], [0, 1, 2]):
        expected = space["model"](input_ids=rows[0][0]).logits
    torch.testing.assert_close(small(input_ids=rows[0][0]).logits, expected)  # the cut is the served depth


@pytest.mark.parametrize("page", ["README.md", "README.zh-CN.md"])
def test_the_readmes_random_layerdrop_block_runs(page):
    code = _block(page, "layerdrop.prune(model, depth=3)")
    space = {"layerdrop": layerdrop, "model": _six_layers()}
    exec(code, space)
    assert len(layerdrop.find_layers(space["small"]).layers) == 3
    assert layerdrop.state_of(space["model"]) is not None  # applied, with its hooks


def test_the_readmes_what_exactly_happens_calls_run():
    model = layerdrop.apply(_six_layers(), rate=0.2)
    ids = torch.randint(3, 99, (2, 5))
    small = layerdrop.view(model.eval(), depth=3)  # shares every weight, leaves the model as it is
    assert len(layerdrop.find_layers(small).layers) == 3 and len(layerdrop.find_layers(model).layers) == 6
    with layerdrop.only_layers(model, keep=[0, 3, 5]):
        expected = model(input_ids=ids).logits
    pruned = layerdrop.prune(model, keep=[0, 3, 5]).eval()
    torch.testing.assert_close(pruned(input_ids=ids).logits, expected)
    state = layerdrop.core.apply.get_rng_state(model)
    layerdrop.core.apply.set_rng_state(model, state)
    layerdrop.apply(Custom(), rate=0.2, layers="encoder.blocks")


@pytest.mark.parametrize("page, containing", [
    ("docs/compile.md", "layerdrop.compile_layers(model)"),
    ("docs/granularity.md", 'granularity="sublayer"'),
    ("docs/strategies.md", "attach_rate_learner"),
    ("docs/training.md", 'attach(trainer, schedule="progressive")'),
    ("docs/training.md", "record_masks(model)"),
])
def test_a_docs_block_that_needs_only_a_model_runs(page, containing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = make("bert")
    rows = [{"input_ids": torch.randint(3, 99, (6,)), "labels": torch.tensor(i % 3)} for i in range(8)]
    optimizer = torch.optim.AdamW(model.parameters())
    space = {"layerdrop": layerdrop, "model": model, "train": rows, "optimizer": optimizer,
             "batch": {"input_ids": torch.stack([r["input_ids"] for r in rows]),
                       "labels": torch.stack([r["labels"] for r in rows])},
             "Trainer": Trainer, "TrainingArguments": lambda *a, **k: TrainingArguments(
                 str(tmp_path), max_steps=1, report_to=[], use_cpu=True, disable_tqdm=True)}
    code = textwrap.dedent(_block(page, containing)).replace("TrainingArguments(...)", "TrainingArguments()")
    code = code.replace("Trainer(model=model, ...)", "Trainer(model=model, args=TrainingArguments())")
    if "layerdrop.apply(" not in code:  # the block says it comes after layerdrop.apply
        layerdrop.apply(model, rate=0.5)
    exec(code, space)


def test_the_demo_takes_one_figure_of_minutes_everywhere():
    import layerdrop.config.recipes
    from layerdrop import cli

    readme = re.search(r"`make demo` then takes about (\d+) minutes", (ROOT / "README.md").read_text()).group(1)
    zh = re.search(r"`make demo` 在空闲的 2 核 CPU 上约 (\d+) 分钟", (ROOT / "README.zh-CN.md").read_text()).group(1)
    help_ = re.search(r"About (\d+) minutes", cli.demo.__doc__).group(1)
    config = re.search(r"about (\d+) minutes", layerdrop.config.recipes.DemoConfig.__doc__).group(1)
    assert readme == zh == help_ == config
