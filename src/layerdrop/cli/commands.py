"""The subcommands of ``layerdrop``: one typed function each, whose docstring is its ``--help``.

Each imports torch and transformers only when it runs, so ``layerdrop --help`` starts fast, and each
is the only place that talks to the user about its command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from layerdrop.config.args import DistillConfig, TrainConfig
from layerdrop.config.recipes import (
    CompareConfig,
    DemoConfig,
    ElasticConfig,
    ExitsConfig,
    HeadsConfig,
    ServeConfig,
    SweepConfig,
)
from layerdrop.errors import InputError

__all__ = ["compare", "demo", "distill", "elastic", "exits", "generate", "heads", "prune", "report", "serve", "sweep",
           "train"]


def train(config: TrainConfig) -> int:
    """Fine-tune or pre-train a model with LayerDrop, then evaluate and export it.

    TASK is classification, mlm, clm or qa (SQuAD-format JSON). MODEL is a local folder, a bundled model
    (minilm-l6, e5-small, smollm2-135m) or a from-scratch preset (bert-tiny, gpt2-tiny, ...).

    Examples:
      layerdrop train classification minilm-l6 --data rotten-tomatoes --out runs/rt --rate 0.2
      layerdrop train classification e5-small --data chinese-sentiment --out runs/zh --freeze-embeddings
      layerdrop train classification minilm-l6 --data 20newsgroups --long-doc mean --out runs/ng
      layerdrop train clm gpt2-tiny --data kjv --out runs/kjv --rate 0.5 --schedule progressive
      layerdrop train qa minilm-l6 --data my-squad.json --out runs/qa --rate 0.2 --max-length 256 --stride 64
    """
    from layerdrop.recipes import train as recipe

    result = recipe.run(config)
    if not result.main_process:  # launched on several ranks: rank 0 reports
        return 0
    where = f"resumed from {result.resumed_from.name}, " if result.resumed_from else ""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    print(f"done: {config.task} {config.model} on {config.data}, {result.steps} steps, {where}"
          f"{result.seconds:.0f} s; {shown}")
    print(f"model: {result.model_dir}")
    return 0


def prune(model: str, out: str, depth: int | None = None, keep: str | None = None,
          strategy: str = "", data: str | None = None, rows: int = 500) -> int:
    """Cut a saved model to fewer layers and write a plain Hugging Face checkpoint.

    Also writes layerdrop.json: the kept layers, the strategy and how it chose,
    the parameters before and after, and the validation quality when --data is
    given. A classifier saved by `layerdrop train` keeps its head.

    Args:
        model: Model folder (or bundled model name) to prune.
        out: Output folder; written atomically.
        depth: Number of layers to keep, chosen by --strategy.
        keep: Comma-separated 0-based layer indices to keep instead, e.g. 0,2,5.
        strategy: every-other, search, block-influence, angular, top, data-driven or trained (search and the
            importance metrics need --data; data-driven needs a model trained with --data-driven). Empty: the
            model's own, the layers it was trained to serve (layerdrop train --depths), else every-other.
        data: Dataset name or file: the validation split scores the choice (and calibrates the importance metrics).
        rows: Validation rows used with --data.
    """
    from layerdrop.recipes.prune_saved import prune_saved

    try:
        indices = None if keep is None else [int(x) for x in keep.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--keep takes comma-separated integers like 0,2,5, got {keep!r}") from None
    record = prune_saved(model, out, depth=depth, keep=indices, strategy=strategy, data=data, rows=rows)
    _cut_note(model, record["trained_with_layerdrop"], len(record["kept_layers"]), record["original_num_layers"],
              record["strategy"])
    quality = {k: v for k, v in record.items() if k.startswith("validation_")}
    shown = "".join(f", {k.removeprefix('validation_')} {v:.4g}" for k, v in quality.items())
    print(f"kept layers {record['kept_layers']} of {record['original_num_layers']} ({record['strategy']}): "
          f"{record['parameters_before'] / 1e6:.2f}M -> {record['parameters_after'] / 1e6:.2f}M parameters{shown}")
    print(f"model: {out}")
    return 0


def distill(config: DistillConfig) -> int:
    """Distil a trained teacher into a smaller student: DistilBERT-style, or prune-and-heal.

    TEACHER is a model trained for a task (a classifier or QA model from `layerdrop train`, or a
    language model). The student is the teacher cut to --depth layers (--strategy chooses which;
    every-other is DistilBERT's initialisation), or --student PATH. It learns --alpha-task x the
    task loss + --alpha-kd x KL to the teacher's predictions at --temperature, optionally plus the
    hidden-state losses. Run the same command again to continue an interrupted run.

    Examples:
      layerdrop distill runs/rt/model --data rotten-tomatoes --depth 3 --out runs/rt-distilled-3
      layerdrop distill runs/zh/model --data chinese-sentiment --depth 6 --alpha-cos 1 --out runs/zh-6
      layerdrop distill smollm2-135m --data kjv --depth 20 --strategy angular --alpha-task 0 --out runs/heal-20
    """
    from layerdrop.recipes.distill import run_or_reuse

    result_dir = run_or_reuse(config)
    meta = json.loads((result_dir / "layerdrop.json").read_text())
    shown = ", ".join(f"{k} {v:.4g}" for k, v in meta["metrics"].items())
    theirs = ", ".join(f"{k} {v:.4g}" for k, v in meta.get("teacher_metrics", {}).items())
    print(f"done: {len(meta['kept_layers'])}-layer student (teacher layers {meta['kept_layers']}), "
          f"{meta['train_seconds']:.0f} s of training; {shown or 'not scored'}")
    if theirs:
        print(f"teacher: {theirs}")
    print(f"model: {result_dir}")
    return 0


def sweep(config: SweepConfig) -> int:
    """Measure quality, latency and parameters at every depth for each layer-choice strategy.

    MODEL is a saved classifier (accuracy), QA model (F1) or causal LM (perplexity);
    --data is scored on its validation split (--split test for a final table). Writes sweep.csv,
    sweep.json, sweep.md and PNG plots (quality against depth, against latency with the Pareto front,
    and per-layer importance) to --out.

    Example:
      layerdrop sweep runs/rt/model --data rotten-tomatoes --strategies every-other,search,block-influence \\
        --out runs/rt-sweep
    """
    from layerdrop.recipes.sweep import run_sweep

    result = run_sweep(config)
    print(result.table)
    print(f"sweep: {result.out / 'sweep.md'}")
    return 0


def heads(config: HeadsConfig) -> int:
    """Fit each served depth its own classifier head, so a sub-network no longer shares the full one's.

    MODEL is a classifier trained with --depths. For each served depth below the full one, a linear head is
    fitted on the pooled outputs of that depth's layers over the training rows, every other weight frozen
    (about a minute on 2 cores), and kept where it beats the shared head on the validation rows. The heads
    are written into MODEL; views, cuts (layerdrop prune), sweep, serve and early exit pick each depth's own.
    Writes heads.md and heads.json to --out. layerdrop train --depths fits them itself at the end of a run;
    this is for a model trained with --no-depth-heads, or before they existed.

    Example:
      layerdrop heads runs/rt-elastic/model --out runs/rt-heads
    """
    from layerdrop.recipes.heads import run_heads

    result = run_heads(config)
    print(result.table)
    if config.record:
        kept = [str(d.depth) for d in result.depths if d.kept]
        print(f"heads of depths {', '.join(kept)} written into {config.model}" if kept else
              f"no depth's own head beat the shared one on the validation rows; {config.model} keeps the shared head")
    if result.exits_dropped:
        print(f"the calibrated early exit was removed from {config.model} (it scored the old heads); run "
              "layerdrop exits on it again", file=sys.stderr)
    print(f"heads: {result.out / 'heads.md'}")
    return 0


def exits(config: ExitsConfig) -> int:
    """Calibrate early exit with a guarantee: easy inputs leave at a shallow depth, and the accuracy (F1 for
    question answering) lost is at most --max-drop points with probability --confidence.

    MODEL is a classifier or a question-answering model trained with --depths (its depths are the exits;
    nested ones, --strategy top, continue each other's computation). Each rule's threshold is chosen on
    --data's validation rows (questions, for QA) and measured on its test rows (accuracy or F1, realised
    drop, mean layers, where rows leave, batch throughput against full depth). The rule that runs fewest
    layers is recorded in MODEL's config.json, so serve's "depth": "auto", layerdrop.exits.exit_predict and
    layerdrop.exits.exit_spans use it. Writes exits.md, exits.json and exit_depths.png to --out.

    Examples:
      layerdrop exits runs/rt-elastic/model --data rotten-tomatoes --max-drop 0.5 --out runs/rt-exits
      layerdrop exits runs/qa-elastic/model --data cmrc2018_train.json --max-drop 1 --out runs/qa-exits
    """
    from layerdrop.recipes.exits import run_exits

    result = run_exits(config)
    print(result.table)
    if result.recorded is None:
        print(f"no rule kept a drop of at most {config.max_drop:g} points on the validation rows; nothing recorded "
              "(try a larger --max-drop or a lower --confidence)", file=sys.stderr)
    elif config.record:
        print(f"recorded: {result.recorded.rule} in {Path(config.model) / 'config.json'}")
    print(f"exits: {result.out / 'exits.md'}")
    return 0


def _cut_note(name: str, trained: bool, depth: int, num_layers: int, strategy: str) -> None:
    """One line on stderr when a model that records no LayerDrop training is cut: such a model
    was never trained to run without its other layers; and what to do instead."""
    if trained or depth >= num_layers:
        return
    retrain = ("heal the cut with `layerdrop distill` (the full model teaching its cut), or continue its training "
               "with LayerDrop (`layerdrop elastic` for a decoder, `layerdrop train --rate` otherwise)")
    if strategy == "every-other":
        advice = ("such a model often loses most of its quality (a language model writes garbage); try an importance "
                  f"strategy (--strategy block-influence or angular, with --data for calibration), or {retrain}")
    elif strategy == "keep":
        advice = f"such a model often loses much of its quality; to recover it, {retrain}"
    else:
        advice = f"it loses quality even with {strategy}; to recover it, {retrain}"
    print(f"note: {name} records no LayerDrop training; cut to {depth} of {num_layers} layers, {advice}",
          file=sys.stderr)


def generate(model: str, prompt: str, depth: int | None = None, max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             stop: str | None = None, seed: int = 0, speculative: int | None = None,
             draft_tokens: int = 4, adaptive_draft: bool = False, draft_confidence: float = 0.0,
             no_repeat_ngram: int = 0,
             strategy: str = "", data: str | None = None) -> int:
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
        adaptive_draft: Adapt the draft length round by round: 2 more after a fully accepted round, 1 fewer
            after a rejection (--draft-tokens starts it).
        draft_confidence: End a round's drafting after a token the draft gives a probability below this (0 is
            off; HF's default for assisted decoding is 0.4); --draft-tokens is then the most a round drafts.
        no_repeat_ngram: Never repeat an n-gram of this size (prompt included), so greedy text cannot loop; 0 is
            off. Works with --speculative.
        strategy: How --depth chooses its layers: every-other, search, angular, block-influence, top, data-driven
            or trained (search, angular and block-influence need --data; search scores each candidate on its
            validation rows). Empty: the model's own, the layers it was trained to serve, else every-other.
        data: Dataset name or text file whose validation rows calibrate --strategy.
    """
    from transformers import AutoTokenizer

    from layerdrop.core.apply import trained_with_layerdrop
    from layerdrop.core.arch import find_layers
    from layerdrop.core.depths import check_depth
    from layerdrop.cut.scored import check_data, choose_with, strategy_scorers
    from layerdrop.cut.strategies import own_strategy
    from layerdrop.models.loading import from_pretrained, load_saved, local_folder
    from layerdrop.serving.generate import generate as run

    if strategy and depth is None:
        raise InputError(f"--strategy {strategy} chooses the layers of --depth: pass --depth too")
    if not 0 <= draft_confidence < 1:
        raise InputError(f"--draft-confidence must be a probability from 0 (off) to below 1, got {draft_confidence}")
    if no_repeat_ngram < 0:
        raise InputError(f"--no-repeat-ngram must be 0 (off) or an n-gram size of at least 1, got {no_repeat_ngram}")
    if (adaptive_draft or draft_confidence) and speculative is None:
        option = "--adaptive-draft" if adaptive_draft else "--draft-confidence"
        raise InputError(f"{option} changes the draft of --speculative: pass --speculative K too")
    if strategy:
        check_data(strategy, data)
    lm = load_saved(model).eval()
    tokenizer = from_pretrained(AutoTokenizer, local_folder(model))
    keep = None
    if depth is not None and strategy:  # a named strategy's layers, chosen before any output
        check_depth(depth, len(find_layers(lm).layers))
        keep = choose_with(strategy, lm, depth, strategy_scorers(lm, tokenizer, data) if data else None).kept
    strategy = strategy or own_strategy(lm)
    started: list[bool] = []

    def show(text: str) -> None:  # the note and the prompt wait for the first token: every check has passed
        if not started:
            started.append(True)
            if depth is not None:
                _cut_note(model, trained_with_layerdrop(lm), depth, len(find_layers(lm).layers), strategy)
            print(prompt, end="", flush=True)
        print(text, end="", flush=True)
    result = run(lm, tokenizer, prompt, depth=None if keep else depth, keep=keep,
                 max_new_tokens=max_new_tokens, temperature=temperature,
                 top_k=top_k, top_p=top_p, stop=[s for s in (stop or "").split(",") if s], seed=seed,
                 on_text=show, speculative=speculative,
                 draft_tokens=draft_tokens, adaptive_draft=adaptive_draft,
                 draft_confidence=draft_confidence, no_repeat_ngram=no_repeat_ngram)
    show("")
    print()
    note = " (prompt truncated to fit the context)" if result.prompt_truncated else ""
    if result.draft_depth is not None:
        note += (f"; speculative: draft of {result.draft_depth} layers, {result.accepted} of {result.drafted} "
                 f"drafted tokens accepted ({100 * result.acceptance_rate:.0f} %)")
    layers = f" (layers {', '.join(map(str, result.kept))})" if result.kept is not None else ""
    print(f"[{result.new_tokens} tokens at depth {result.depth}{layers}, "
          f"{result.tokens_per_second:.1f} tokens/s{note}]", file=sys.stderr)
    return 0


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
    from layerdrop.recipes.elastic import run_elastic

    result = run_elastic(config, log=print)
    print(f"\n{result.table}")
    print(f"report: {result.report}  (training {result.train_seconds / 60:.1f} min)")
    return 0


def compare(config: CompareConfig) -> int:
    """Compare LayerDrop, distillation and fixed-depth models at each depth, with what each costs to train.

    From one pretrained encoder (MODEL) and one labelled dataset (accuracy), or one decoder and
    one corpus (perplexity), trains and scores on the same test split: the plain model cut, one
    LayerDrop run cut, that cut healed by distillation, models cut first and fine-tuned,
    DistilBERT-style students, and top layers dropped then fine-tuned. A preset (gpt2-tiny, ...)
    is built once and every method trains it from scratch. Writes compare.md (quality, size,
    latency, and the runs and minutes that serve every depth), compare.csv, compare.json and
    plots to --out. Run it again to resume.

    Examples:
      layerdrop compare minilm-l6 --data rotten-tomatoes --depths 6,4,3 --out runs/compare-minilm
      layerdrop compare e5-small --data chinese-sentiment --depths 12,6,3 --freeze-embeddings --out runs/compare-e5
      layerdrop compare gpt2-tiny --data kjv --depths 6,3 --train-rows 0 --max-steps 1000 --batch-size 16 \\
        --lr 1e-3 --max-length 128 --out runs/compare-kjv
    """
    from layerdrop.recipes.compare import run_compare

    result = run_compare(config, log=lambda text: print(text, file=sys.stderr))
    print(result.table)
    print(f"report: {result.out / 'compare.md'}")
    return 0


def demo(config: DemoConfig) -> int:
    """Show LayerDrop against plain training at every depth, offline, on a real model and real data.

    (a) fine-tunes MiniLM-L6 on Rotten Tomatoes without LayerDrop and as one
    elastic run (each step also trains the every-other sub-networks of --rt-depths)
    and prunes both to every depth; (b) trains a small GPT-2-style LM on the King
    James Bible the same two ways (--lm-depths); (c) writes plots, a Markdown report
    and pruned checkpoints to --out. About 15 minutes on 2 quiet CPU cores (measured on a fresh
    clone, see the README); --full runs the full-size quality-bar experiment instead.
    """
    from layerdrop.recipes.demo import run_demo

    result = run_demo(config, log=print)
    for name, table in result.tables.items():
        print(f"\n{name}:\n{table}")
    print("\n".join(result.verdict))
    print(f"report: {result.report}  ({result.seconds / 60:.1f} min)")
    return 0


def serve(config: ServeConfig) -> int:
    """Serve one model at every depth from one copy of its weights: each request picks a depth or a latency budget.

    Loads MODEL (a classifier trained by `layerdrop train classification`, or a causal LM),
    builds a weight-sharing view per depth (every-other layers, or --strategy's), times each depth on this
    machine, and serves, with FastAPI and uvicorn (pip install 'layerdrop[serve]'):
    POST /v1/completions (OpenAI's shape, plus depth, latency_ms, speculative; model NAME@K),
    POST /v1/classify, GET /v1/depths, /v1/models, /healthz, /readyz, /metrics, and a page at /.
    Binds to 127.0.0.1 unless --host says otherwise; never runs code from the model folder.

    Examples:
      layerdrop serve out/demo/rt-elastic-6-3-2/model --sweep runs/rt-sweep
      layerdrop serve smollm2-135m --depths 30,24,20 --strategy angular --data kjv --port 8001
      curl -s localhost:8000/v1/classify -H 'Content-Type: application/json' \\
        -d '{"input": "a wonderful film", "latency_ms": 50}'
    """
    from layerdrop.recipes.serve import run

    try:
        run(config, log=lambda line: print(line, flush=True))
    except RuntimeError as err:
        print(f"layerdrop serve: error: {err}", file=sys.stderr)
        return 1
    return 0


def report(pages: list[str], runs: str = ".", check: bool = False, copy_to: str | None = None) -> int:
    """Refill a Markdown page's generated tables and figures from the runs' JSON.

    A page marks each generated part with `<!-- layerdrop:KIND RUN [key=value ...] -->` and
    `<!-- /layerdrop -->`; everything between them is redrawn from the run (compare, sweep,
    levers, generation; figures compare-plot, sweep-plot, levers-loss, importance, masks, mechanism with
    image=PATH relative to the page). Blocks whose runs are missing are left as they are. A page
    named *.zh-CN.md gets its tables and figures in Chinese. The lecture's pages
    (docs/lecture.zh-CN.md, docs/lecture.md) are built this way, and the run files they are drawn
    from ship in docs/lecture-runs.

    Examples:
      layerdrop report docs/lecture.zh-CN.md --runs docs/lecture-runs --check
      layerdrop report docs/lecture.zh-CN.md docs/lecture.md --runs . --copy-to docs/lecture-runs

    Args:
        pages: Markdown pages to refresh in place.
        runs: Folder the blocks' run paths are relative to.
        check: Change nothing; exit 1 if a page's tables differ from what its runs give.
        copy_to: Also copy the run files the pages were drawn from to this folder (same relative paths).
    """
    from layerdrop.recipes.pages import copy_runs, refresh_page

    stale, files = [], []
    for page in pages:
        result = refresh_page(page, runs, write=not check)
        for block in result.missing:
            named = f" runs={block.options['runs']}" if "runs" in block.options else ""
            print(f"{page}: kept as it was: {block.kind} {block.source}{named} (not all found under {runs})")
        if check and result.text != Path(page).read_text(encoding="utf-8"):
            stale.append(page)
        files += [path for path in result.files if path not in files]
        print(f"{page}: {len(result.refreshed)} block(s) {'checked' if check else 'refreshed'}")
    if copy_to is not None:
        copied = copy_runs(files, runs, copy_to)
        print(f"copied {len(copied)} run file(s), {sum(p.stat().st_size for p in copied) / 1e3:.0f} kB, to {copy_to}")
    for page in stale:
        print(f"{page}: out of date; run `layerdrop report {page} --runs {runs}`")
    return 1 if stale else 0


