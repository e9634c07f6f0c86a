"""Generation speed at each depth, and self-speculative decoding against full-depth greedy decoding.

Prints, from one run (greedy decoding, KV cache, N new tokens after a fixed prompt, or after each
of ``--prompts`` varied ones: then every figure is over the whole set, and the full-depth text's
repeated 4-grams say whether it loops, the case where drafts are easy):
  1. tokens per second at each depth (the model cut with every-other layers);
  2. for each draft depth K, self-speculative decoding: tokens per second, the speed-up over
     full-depth greedy decoding, the acceptance rate, and whether the text is identical to
     the full-depth greedy text (it must be); with ``--adaptive`` also with the draft length
     adapted round by round (2 more after a fully accepted round, 1 fewer after a rejection), and
     with ``--confidence Q`` also ending a round's drafting after a token the draft gives p < Q;
  3. what stands between a draft and 1.5x: a one-token forward of the draft and a forward of
     the model over ``--draft-tokens`` + 1 tokens, each timed against a one-token forward of the
     model; a round of n drafted tokens costs n draft steps and one verify and yields the accepted
     tokens plus one, so from these costs and the share of drafted tokens accepted (fixed n), the
     speed-up over the bare loop they predict, and the share that 1.5x over the bare loop needs.
     A steady-state model: it leaves out the draft's pass over the prompt, the loop's own Python
     work and, with ``--no-repeat-ngram``, the ban (applied about twice per token, once in the
     bare loop), which the measured speed-up includes;
  3b. with ``--hf-early-exit K,...``, Hugging Face's own self-speculative decoding beside it
     (``generate(assistant_early_exit=K)``, LayerSkip's method: the model's first K layers and its
     shared head draft, every layer verifies), with the same draft length: tokens per second, the
     speed-up over HF ``generate``, the acceptance (counted from the model's forwards) and whether the
     text is the full-depth greedy text. HF's exit runs the *first* K layers, this project's draft
     the layers the model was trained to serve at K (every-other by default; the first K for a model
     trained with ``--depths ... --strategy top``). An architecture whose forward ignores
     ``config.num_hidden_layers`` (GPT-2) cannot draft that way: refused, with the reason;
  4. memory: what building the draft adds to the process (it shares the model's weights),
     next to what a deep copy of the model adds.

``--no-repeat-ngram N`` decodes every variant with no repeated N-gram (``no_repeat_ngram_size``):
greedy text that cannot loop, for measuring drafts on a small model whose plain greedy text loops.

Runs of the variants are interleaved and medians reported, so drift of the machine affects
all alike. Full-depth and cut-depth decoding go through HF ``generate`` (what ``layerdrop
generate`` runs without ``--speculative``); speculative decoding is layerdrop's own
draft-and-verify loop (``layerdrop.serving.generate.generate(..., speculative=K)``). HF ``generate``
spends some time per step on its own machinery, which a bare loop does not, so full-depth greedy
decoding is also timed as a bare loop (one forward per token, the same KV cache), and the
speed-up is given over both.

    python bench/generate.py [--quick] [--json out.json] [--model smollm2-135m] [--prompts 16] [--adaptive]
                             [--new-tokens 64] [--depths 30,20,15] [--speculative 15,20] [--draft-tokens 4]
                             [--no-repeat-ngram 3] [--hf-early-exit 15] [--runs 3] [--threads 1]

``--model`` is a local folder, a bundled name (``smollm2-135m``: converted once from GGUF into a
cached folder, about 20 s the first time), or ``random``: a tiny randomly initialised Llama, for
a smoke test only (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, DynamicCache, LlamaConfig, LlamaForCausalLM, NoRepeatNGramLogitsProcessor

import layerdrop
from layerdrop.cut.prune import view
from layerdrop.evaluation.measure import repeated_ngrams
from layerdrop.models.loading import load_saved, local_folder, resolve
from layerdrop.serving.generate import Generation, generate

PROMPT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
          "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.")
"""Genesis 1:1-2, King James Version."""


def _load(name: str) -> tuple[torch.nn.Module, object]:
    if name == "random":
        tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6")[0])
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=6,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                             max_position_embeddings=256, eos_token_id=None)
        return LlamaForCausalLM(config).eval(), tokenizer
    return load_saved(name).eval(), AutoTokenizer.from_pretrained(local_folder(name))


@torch.no_grad()
def _bare_greedy(model: torch.nn.Module, tokenizer: object, prompt: str, new_tokens: int,
                 no_repeat_ngram: int = 0) -> Generation:
    """Full-depth greedy decoding as a bare loop: one forward per token, a KV cache, no EOS check."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # (1, T)
    ban = NoRepeatNGramLogitsProcessor(no_repeat_ngram) if no_repeat_ngram else None
    start = time.perf_counter()
    cache = DynamicCache(config=model.config)
    step, seq, new = ids, ids, []
    for _ in range(new_tokens):
        logits = model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # (1, V)
        step = (ban(seq, logits) if ban else logits).argmax(-1, keepdim=True)  # (1, 1)
        if ban:
            seq = torch.cat([seq, step], dim=1)
        new.append(int(step))
    return Generation(text=tokenizer.decode(new, skip_special_tokens=True), new_tokens=len(new),
                      depth=len(layerdrop.find_layers(model).layers), prompt_truncated=False,
                      seconds=time.perf_counter() - start)


def _hf_exit_runs_first_layers(model: torch.nn.Module, k: int) -> bool:
    """Whether HF's ``assistant_early_exit=k`` drafts with the first ``k`` layers of this architecture: it sets
    ``config.num_hidden_layers = k`` around the draft's forwards, which Llama's forward honours and GPT-2's
    ignores. Checked on a copy (the model is left as it is): logits of the copy so set, against the first ``k``
    layers alone."""
    probe = copy.deepcopy(model).eval()
    ids = torch.arange(1, 9).unsqueeze(0)  # (1, 8)
    with torch.no_grad():  # no cache: GPT-2 would run every block into a cache made for k layers, and fail
        with layerdrop.only_layers(probe, range(k)):
            expected = probe(input_ids=ids, use_cache=False).logits
        getattr(probe, probe.base_model_prefix).config.num_hidden_layers = k
        got = probe(input_ids=ids, use_cache=False).logits
    return torch.allclose(got, expected, atol=1e-4)


@torch.no_grad()
def _hf_early_exit(model: torch.nn.Module, tokenizer: object, prompt: str, new_tokens: int, k: int,
                   draft_tokens: int, no_repeat_ngram: int = 0) -> Generation:
    """HF ``generate(assistant_early_exit=k)`` with a constant draft of ``draft_tokens``, greedy, and the
    settings ``layerdrop.serving.generate.generate`` gives HF ``generate``. Drafted and accepted tokens are
    counted from the model's forwards: each draft forward proposes one token, and each verify forward yields
    the accepted tokens plus one. The model's generation config and hooks are as they were afterwards (a
    benchmark's model; the library never swaps them)."""
    base = getattr(model, model.base_model_prefix)
    layers = base.config.num_hidden_layers
    calls = {"draft": 0, "verify": 0}

    def count(*_: object) -> None:
        calls["draft" if base.config.num_hidden_layers < layers else "verify"] += 1

    ids = tokenizer(prompt, return_tensors="pt").input_ids  # (1, T)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The assistant is the model itself, and HF reads its draft length from the assistant's own generation
    # config (not from generate's arguments): a constant draft_tokens a round, no confidence stop, as --speculative.
    own = model.generation_config
    model.generation_config = copy.deepcopy(own)
    model.generation_config.update(num_assistant_tokens=draft_tokens, num_assistant_tokens_schedule="constant",
                                   assistant_confidence_threshold=0.0)
    hook = model.register_forward_pre_hook(count)
    start = time.perf_counter()
    try:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, use_cache=True,
                             do_sample=False, pad_token_id=pad, no_repeat_ngram_size=no_repeat_ngram,
                             assistant_early_exit=k)
    finally:
        hook.remove()
        model.generation_config = own
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1]:].tolist()
    return Generation(text=tokenizer.decode(new, skip_special_tokens=True), new_tokens=len(new), depth=layers,
                      prompt_truncated=False, seconds=seconds, draft_depth=k, drafted=calls["draft"],
                      accepted=max(len(new) - calls["verify"], 0), token_ids=tuple(new))


@torch.no_grad()
def _forward_ms(model: torch.nn.Module, draft: torch.nn.Module, ids: torch.Tensor, k: int,
                repeats: int) -> dict[str, float]:
    """Median milliseconds after ``ids`` in a KV cache: a one-token forward of ``model`` ("full") and of
    ``draft``, and a forward of ``model`` over ``k + 1`` tokens ("verify", every position's logits,
    as the speculative loop runs it). Interleaved; each cache is cropped back after each forward."""
    caches = {}
    for name, m in (("full", model), ("draft", draft)):
        caches[name] = DynamicCache(config=model.config)
        m(input_ids=ids, cache=caches[name], use_cache=True)
    verify = ids[:, -1:].repeat(1, k + 1)  # (1, k + 1) whatever the prompt's length; the values do not matter
    steps = [("full", model, ids[:, -1:], 1), ("draft", draft, ids[:, -1:], 1), ("verify", model, verify, 0)]
    times: dict[str, list[float]] = {name: [] for name, *_ in steps}
    for _ in range(repeats):
        for name, m, x, keep in steps:
            cache = caches["draft" if name == "draft" else "full"]
            start = time.perf_counter()
            m(input_ids=x, cache=cache, use_cache=True, logits_to_keep=keep)
            times[name].append(1000 * (time.perf_counter() - start))
            cache.crop(-x.shape[1])
    return {name: statistics.median(t) for name, t in times.items()}


def _round_costs(k: int, draft: float, verify: float) -> float:
    """A round of ``k`` drafted tokens, in one-token forwards of the model: ``k`` draft steps and a verify."""
    return k * draft + verify


def _prompts(count: int, prompt: str, corpora: str) -> list[str]:
    """``[prompt]``, or ``count`` varied prompts: the first 12 words of test texts, the corpora in turn."""
    if count <= 1:
        return [prompt]
    from layerdrop import data

    texts = [[t for t in data.load(name.strip()).test.texts if len(t.split()) >= 12] for name in corpora.split(",")]
    return [" ".join(texts[i % len(texts)][i // len(texts)].split()[:12]) for i in range(count)]


def _ints(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",") if x.strip()] if text else None


def _rss_mib() -> float:
    """Resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="folder, bundled name, or 'random' (smoke test)")
    p.add_argument("--prompt", default=PROMPT, help="the prompt, when --prompts is 1")
    p.add_argument("--prompts", type=int, default=1,
                   help="more than 1: that many varied prompts, the first 12 words of test texts of --prompt-data")
    p.add_argument("--prompt-data", default="kjv,20newsgroups",
                   help="comma-separated corpora the prompts alternate over")
    p.add_argument("--adaptive", action="store_true", help="also time each draft with an adaptive draft length")
    p.add_argument("--confidence", type=float, default=0.0,
                   help="also time each draft ending a round after a token it gives less than this probability "
                        "(--draft-tokens at most)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--depths", help="comma-separated depths to time (default: L, 2L/3, L/2)")
    p.add_argument("--speculative", help="comma-separated draft depths (default: L/2, 2L/3)")
    p.add_argument("--draft-tokens", type=int, default=4, help="tokens drafted per verification")
    p.add_argument("--no-repeat-ngram", type=int, default=0,
                   help="decode every variant with no repeated n-gram of this size (0: plain greedy)")
    p.add_argument("--hf-early-exit", help="comma-separated K: also time HF generate(assistant_early_exit=K)")
    p.add_argument("--runs", type=int, help="timed runs per variant, after one warm-up (default 3, quick 1)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true", help="one timed run, 32 new tokens, one draft depth (L/2)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    a = p.parse_args()
    a.runs = (1 if a.quick else 3) if a.runs is None else a.runs
    if a.runs < 1:
        p.error("--runs must be at least 1")
    if a.quick:
        a.new_tokens = min(a.new_tokens, 32)
    torch.set_num_threads(a.threads)

    model, tokenizer = _load(a.model)
    num_layers = len(layerdrop.find_layers(model).layers)
    depths = _ints(a.depths) or sorted({num_layers, round(2 * num_layers / 3), num_layers // 2}, reverse=True)
    drafts = _ints(a.speculative) or sorted({num_layers // 2} if a.quick else {num_layers // 2,
                                                                                round(2 * num_layers / 3)})
    prompts = _prompts(a.prompts, a.prompt, a.prompt_data)
    # Pruned copies, made outside the timing: what a user who cuts the model runs.
    cut = {d: model if d == num_layers else layerdrop.prune(model, d).eval() for d in depths}
    full = cut.get(num_layers, model)

    def plain(m: torch.nn.Module) -> Callable[[str], Generation]:
        return lambda prompt: generate(m, tokenizer, prompt, max_new_tokens=a.new_tokens,
                                       no_repeat_ngram=a.no_repeat_ngram)

    variants: dict[str, Callable[[str], Generation]] = {f"depth {d}": plain(m) for d, m in cut.items()}
    if num_layers not in cut:
        variants[f"depth {num_layers}"] = plain(full)
    variants["bare"] = lambda prompt: _bare_greedy(full, tokenizer, prompt, a.new_tokens, a.no_repeat_ngram)
    schedules: dict[str, dict] = {"": {}}
    if a.adaptive:
        schedules[" adaptive"] = {"adaptive_draft": True}
    if a.confidence:
        schedules[" confident"] = {"draft_confidence": a.confidence}
    for k in _ints(a.hf_early_exit) or []:
        if not 1 <= k < num_layers:
            p.error(f"--hf-early-exit {k}: the exit must be a layer count from 1 to {num_layers - 1}")
        if not _hf_exit_runs_first_layers(full, k):
            p.error(f"--hf-early-exit: {full.config.model_type}'s forward ignores config.num_hidden_layers, which "
                    "HF's assistant_early_exit sets to draft with the first layers (on GPT-2, transformers 5.24 then "
                    "fails in its KV cache); time --speculative alone on this model")
        variants[f"hf early exit {k}"] = (lambda prompt, k=k: _hf_early_exit(
            full, tokenizer, prompt, a.new_tokens, k, a.draft_tokens, a.no_repeat_ngram))
    for k in drafts:
        for suffix, options in schedules.items():
            variants[f"speculative {k}{suffix}"] = (
                lambda prompt, k=k, options=options: generate(
                    full, tokenizer, prompt, max_new_tokens=a.new_tokens, speculative=k, draft_tokens=a.draft_tokens,
                    no_repeat_ngram=a.no_repeat_ngram, **options))
    # results[name][run][i]: prompt i's generation in timed run ``run``; variants interleaved prompt by prompt
    results: dict[str, list[list[Generation]]] = {name: [] for name in variants}
    for i in range(1 + a.runs):
        round_ = {name: [] for name in variants}
        for prompt in prompts:
            for name, run in variants.items():
                round_[name].append(run(prompt))
        if i > 0:  # the first round warms up
            for name in variants:
                results[name].append(round_[name])

    def rate(name: str) -> float:  # tokens per second over the whole prompt set, median of the runs
        return statistics.median(sum(g.new_tokens for g in r) / sum(g.seconds for g in r) for r in results[name])

    reference = results[f"depth {num_layers}"][0]
    shares = [r for r in (repeated_ngrams(list(g.token_ids), 4) for g in reference) if r == r]  # nan: < 4 tokens
    repeated = statistics.mean(shares) if shares else float("nan")
    prompt_tokens = [len(tokenizer(p).input_ids) for p in prompts]
    print(f"# bench/generate.py{' --quick' if a.quick else ''}: {a.model} ({model.config.model_type}, {num_layers} "
          f"layers), {len(prompts)} prompt(s) of {min(prompt_tokens)}-{max(prompt_tokens)} tokens, {a.new_tokens} new "
          f"tokens each, greedy{f' with no repeated {a.no_repeat_ngram}-gram' if a.no_repeat_ngram else ''}, "
          f"KV cache, {a.threads} threads, torch {torch.__version__}, {platform.machine()}, "
          f"median of {a.runs}")
    print(f"{'full-depth greedy text':<38}: {100 * repeated:.0f} % of its 4-grams repeated (mean over the prompts; "
          f"{100 * max(shares, default=float('nan')):.0f} % at most; a loop repeats most of them)")
    for d in sorted({*depths, num_layers}, reverse=True):
        label = f"depth {d}{' (full)' if d == num_layers else ''}, HF generate"
        print(f"{label:<38}: {rate(f'depth {d}'):8.1f} tokens/s")
    # it does not stop at EOS
    bare_same = all(b.text.startswith(r.text) for b, r in zip(results["bare"][0], reference, strict=True))
    print(f"{f'depth {num_layers} (full), bare loop':<38}: {rate('bare'):8.1f} tokens/s "
          f"(same text as HF generate: {'yes' if bare_same else 'NO'})")
    speculative = {}
    for name in [n for n in variants if n.startswith(("speculative", "hf early exit"))]:
        runs = results[name]
        same = all(g.token_ids == r.token_ids for run in runs for g, r in zip(run, reference, strict=True))
        drafted, accepted = sum(g.drafted for g in runs[0]), sum(g.accepted for g in runs[0])
        speed = rate(name)
        k, schedule = int(name.split()[-1 if name.startswith("hf") else 1]), " ".join(name.split()[2:3])
        speculative[name] = {"acceptance": accepted / drafted if drafted else 0.0,
                             "speed_up": speed / rate(f"depth {num_layers}"), "identical": same}
        label = (f"HF assistant_early_exit={k} of {num_layers}" if name.startswith("hf") else
                 f"speculative, draft {k} of {num_layers}{f', {schedule}' if schedule else ''}")
        per_round = {"": "per round", "adaptive": "per round to start", "exit": "per round",
                     "confident": f"per round at most, fewer after p < {a.confidence}"}[schedule]
        print(f"{label:<38}: {speed:8.1f} tokens/s, {speed / rate(f'depth {num_layers}'):.2f}x over HF generate, "
              f"{speed / rate('bare'):.2f}x over the bare loop; acceptance {100 * accepted / max(drafted, 1):.1f} % "
              f"({accepted}/{drafted}, {a.draft_tokens} {per_round}); "
              f"output identical: {'yes' if same else 'NO'}")

    ids = tokenizer(prompts[0], return_tensors="pt").input_ids  # (1, T)
    costs = {}
    for k in drafts:
        ms = _forward_ms(full, view(full, k), ids, a.draft_tokens, repeats=5 if a.quick else 20)
        c, v = ms["draft"] / ms["full"], ms["verify"] / ms["full"]
        share = speculative[f"speculative {k}"]["acceptance"]
        # a round yields its accepted tokens and one of the model's; the bare loop yields one per forward
        predicted = (share * a.draft_tokens + 1) / _round_costs(a.draft_tokens, c, v)
        needed = (1.5 * _round_costs(a.draft_tokens, c, v) - 1) / a.draft_tokens  # the share that gives 1.5x
        costs[k] = {"forward_ms": ms["full"], "draft": c, "verify": v, "predicted_over_bare": predicted,
                    "needed_acceptance": max(needed, 0.0) if needed <= 1 else None}
        need = (f"1.5x over the bare loop needs {100 * max(needed, 0):.0f} % accepted" if needed <= 1 else
                f"1.5x is out of reach at {a.draft_tokens} per round: "
                f"{(a.draft_tokens + 1) / _round_costs(a.draft_tokens, c, v):.2f}x if every drafted token is accepted")
        print(f"{f'costs, draft {k} of {num_layers}':<38}: a draft step {c:.2f}, a verify of {a.draft_tokens + 1} "
              f"tokens {v:.2f} (a one-token forward after {ids.shape[1]} tokens = 1, {ms['full']:.1f} ms); "
              f"{100 * share:.1f} % accepted "
              f"predicts {predicted:.2f}x over the bare loop (measured "
              f"{rate(f'speculative {k}') / rate('bare'):.2f}x); {need}")

    rss, peak = _rss_mib(), _peak_mib()
    draft = view(full, drafts[0])
    rss_draft, peak_draft = _rss_mib(), _peak_mib()
    shared = {t.data_ptr() for t in full.parameters()}
    own = sum(t.numel() for t in draft.parameters() if t.data_ptr() not in shared)
    duplicate = copy.deepcopy(full)
    rss_copy, peak_copy = _rss_mib(), _peak_mib()
    print(f"memory, building the {drafts[0]}-layer draft: RSS {rss_draft - rss:+8.1f} MiB, peak (ru_maxrss) "
          f"{peak_draft - peak:+8.1f} MiB, parameters of its own: {own}")
    print(f"memory, a deep copy of the model: RSS {rss_copy - rss_draft:+8.1f} MiB, peak (ru_maxrss) "
          f"{peak_copy - peak_draft:+8.1f} MiB ({sum(t.numel() for t in duplicate.parameters()) / 1e6:.1f}M "
          "parameters)")
    print(f"full-depth text, first prompt: {reference[0].text[:120]!r}")
    if a.json:
        from layerdrop.files import write_json

        write_json(a.json, {
            "script": "bench/generate.py", "quick": a.quick, "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__, "threads": a.threads, "model": a.model, "layers": num_layers,
            "new_tokens": a.new_tokens, "runs": a.runs, "no_repeat_ngram": a.no_repeat_ngram,
            "tokens_per_s": {name: rate(name) for name in variants},
            "prompts": len(prompts), "prompt_texts": prompts, "repeated_4grams": repeated, "speculative": speculative,
            "costs": costs,
            "draft_memory_mib": {"rss": rss_draft - rss, "own_parameters": own},
        })


if __name__ == "__main__":
    main()
