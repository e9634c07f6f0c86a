"""granularity="sublayer" and granularity="head": the paper's finer structured dropouts."""

import copy
import dataclasses
import random

import pytest
import torch
from torch import nn

import layerdrop
from conftest import NUM_LAYERS, Custom, logits, make, tokens
from layerdrop.core.apply import CONFIG_KEY
from layerdrop.core.arch import Sublayer
from layerdrop.core.mask import sample_part_mask

HEADS = 4
"""Attention heads of every tiny model in conftest."""

# Reproducing a dropped sublayer on a plain model without layerdrop. Where the block adds
# the residual outside the sublayer, zeroing the sublayer's last projection (weight and
# bias; dropout is off) makes it output zeros. BERT-family sublayers add their own residual
# and LayerNorm; there a forward hook replaces the output by the input passed through.
_LAST_PROJECTION = {
    "distilbert": ("attention.out_lin", "ffn.lin2"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
}
_PASS_THROUGH = {  # in sublayer order: module inside a BERT-family layer -> its output when dropped
    "attention": lambda module, args, out: (args[0], None),  # BertAttention(hidden_states, ...)
    "output": lambda module, args, out: args[1],  # BertOutput(hidden_states, input_tensor)
}


def _layers(model):
    return layerdrop.find_layers(model).layers


def _arch(model):
    return layerdrop.find_layers(model).arch


def _sublayer_modules(layer, sublayer: Sublayer):
    """The modules that compute ``sublayer``, minus a gated module itself (its hooks still fire)."""
    try:
        gated = layer.get_submodule(sublayer.path)
    except AttributeError:  # a method, e.g. BERT's feed_forward_chunk
        gated = None
    found = [m for path in sublayer.covers for m in layer.get_submodule(path).modules()]
    return [m for m in found if m is not gated]


def _count_sublayer_calls(model):
    """counts[i][j]: calls into the modules of sublayer j of layer i."""
    counts = [[0] * len(_arch(model).sublayers) for _ in _layers(model)]
    for i, layer in enumerate(_layers(model)):
        for j, sublayer in enumerate(_arch(model).sublayers):
            for module in _sublayer_modules(layer, sublayer):
                def hook(*_, i=i, j=j):
                    counts[i][j] += 1
                module.register_forward_hook(hook)
    return counts


def _gates(model):
    from layerdrop.core.gates import _Gate

    return [(m, n) for m in model.modules() for n, v in vars(m).items() if isinstance(v, _Gate)]


def _head_hooks(model):
    from layerdrop.core.gates import _HeadMask

    return [h for m in model.modules() for h in m._forward_pre_hooks.values() if isinstance(h, _HeadMask)]


def _drop_sublayers_by_hand(name, plain, sublayer_keep):
    """Make ``plain`` compute what layerdrop computes for ``sublayer_keep``, by other means."""
    for layer, keep in zip(_layers(plain), sublayer_keep, strict=True):
        if not any(keep):  # nothing of the layer runs: the whole layer is skipped
            layer.register_forward_hook(lambda module, args, out: args[0])
        elif name in _LAST_PROJECTION:
            for path, kept in zip(_LAST_PROJECTION[name], keep, strict=True):
                if not kept:
                    projection = layer.get_submodule(path)
                    with torch.no_grad():
                        projection.weight.zero_()
                        if projection.bias is not None:
                            projection.bias.zero_()
        else:
            for path, kept in zip(_PASS_THROUGH, keep, strict=True):
                if not kept:
                    layer.get_submodule(path).register_forward_hook(_PASS_THROUGH[path])
    return plain


def _zero_heads_by_hand(plain, head_keep, scale=None):
    """Zero the input columns of each output projection that carry a dropped head."""
    arch = _arch(plain)
    for i, (layer, keep) in enumerate(zip(_layers(plain), head_keep, strict=True)):
        projection = layer.get_submodule(arch.head_proj)
        width = projection.weight.shape[1] if isinstance(projection, nn.Linear) else projection.weight.shape[0]
        d = width // HEADS
        with torch.no_grad():
            for h, kept in enumerate(keep):
                factor = 0.0 if not kept else (1.0 if scale is None else scale[i])
                cols = slice(h * d, (h + 1) * d)
                if isinstance(projection, nn.Linear):  # weight (out, in)
                    projection.weight[:, cols] *= factor
                else:  # GPT-2's Conv1D: weight (in, out)
                    projection.weight[cols, :] *= factor
    return plain


# --- sublayer --------------------------------------------------------------------------


def test_dropped_sublayer_is_never_called_while_the_other_runs(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=3, granularity="sublayer").train()
    counts = _count_sublayer_calls(model)
    mixed = set()
    for _ in range(8):
        before = copy.deepcopy(counts)
        model(input_ids=tokens())
        state = model.layerdrop_state
        for i, keep in enumerate(state.mask.sublayers):
            assert [after > b for after, b in zip(counts[i], before[i], strict=True)] == list(keep), (i, keep)
            assert state.mask.keep[i] == any(keep)
            if any(keep) and not all(keep):
                mixed.add(keep)
    assert mixed == {(True, False), (False, True)}


def test_sublayers_are_drawn_independently():
    model = layerdrop.apply(make("gpt2"), rate=0.5, seed=0, min_layers=0, granularity="sublayer").train()
    seen = [set() for _ in range(NUM_LAYERS)]
    for _ in range(40):
        model(input_ids=tokens(length=3))
        for i, keep in enumerate(model.layerdrop_state.mask.sublayers):
            seen[i].add(keep)
    all_four = {(True, True), (True, False), (False, True), (False, False)}
    assert all(s == all_four for s in seen), seen


def test_sublayer_drop_frequency_matches_rates():
    """Per-sublayer drop frequency, and both-dropped frequency, within 4 binomial standard deviations."""
    rates = [0.1, 0.3, 0.5, 0.7]
    state = layerdrop.apply(make("llama"), rates=rates, min_layers=0, granularity="sublayer").layerdrop_state
    n = 3000
    dropped = torch.zeros(NUM_LAYERS, 2)
    both = torch.zeros(NUM_LAYERS)
    for _ in range(n):
        state.begin_forward(training=True)
        mask = ~torch.tensor(state.mask.sublayers)  # (L, 2)
        dropped += mask
        both += mask.all(1)
    r = torch.tensor(rates)
    tol = 4 * torch.sqrt(r * (1 - r) / n)  # at most 0.037 here
    assert torch.all((dropped / n - r[:, None]).abs() <= tol[:, None]), dropped / n
    tol_both = 4 * torch.sqrt(r**2 * (1 - r**2) / n)
    assert torch.all((both / n - r**2).abs() <= tol_both), both / n  # independent: P(both) = r^2


def test_sublayer_min_layers_counts_layers_running_any_sublayer():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    rates = torch.full((6,), 0.95, dtype=torch.float64)
    for _ in range(200):
        keep = sample_part_mask(rates, 2, g1, min_layers=2)
        drawn = torch.rand((6, 2), generator=g2, dtype=torch.float64) >= rates[:, None]
        assert int(keep.any(1).sum()) >= 2
        assert torch.all(keep >= drawn)  # only adds
        rescued = keep.any(1) & ~drawn.any(1)
        assert torch.all(keep[rescued].sum(1) == 1)  # a rescued layer runs one sublayer
    assert torch.equal(g1.get_state(), g2.get_state())  # exactly L * parts draws, whatever min_layers


def test_sublayer_min_layers_zero_may_drop_everything():
    g = torch.Generator().manual_seed(0)
    rates = torch.full((3,), 0.9, dtype=torch.float64)
    assert any(not sample_part_mask(rates, 2, g).any() for _ in range(200))


def test_eval_runs_every_sublayer(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.9, granularity="sublayer").eval()
    counts = _count_sublayer_calls(model)
    model(input_ids=tokens())
    assert all(c > 0 for row in counts for c in row)
    assert model.layerdrop_state.draws == 0
    assert all(all(k) for k in model.layerdrop_state.mask.sublayers)


def test_sublayer_training_output_equals_dropping_by_hand(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=2, granularity="sublayer").train()
    ids = tokens()
    for _ in range(4):
        out = logits(model, ids)
        keep = model.layerdrop_state.mask.sublayers
        expected = logits(_drop_sublayers_by_hand(arch_name, make(arch_name).eval(), keep), ids)
        torch.testing.assert_close(out, expected, msg=str(keep))


def test_gradient_reaches_only_sublayers_that_ran(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=4, granularity="sublayer").train()
    for _ in range(10):
        model.zero_grad(set_to_none=True)
        logits(model, tokens()).sum().backward()
        keep = model.layerdrop_state.mask.sublayers
        if any(k[0] != k[1] for k in keep):
            break
    sublayers = _arch(model).sublayers
    for layer, layer_keep in zip(_layers(model), keep, strict=True):
        for sublayer, kept in zip(sublayers, layer_keep, strict=True):
            grads = [p.grad for path in sublayer.covers for p in layer.get_submodule(path).parameters()]
            assert grads and all((g is not None) == kept for g in grads), (sublayer.name, kept)


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_module_types_and_state_dict_keys_are_unchanged(arch_name, granularity):
    plain, applied = make(arch_name), layerdrop.apply(make(arch_name), rate=0.3, granularity=granularity)
    assert [type(m) for m in plain.modules()] == [type(m) for m in applied.modules()]
    assert list(plain.state_dict()) == list(applied.state_dict())


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_remove_restores_the_plain_model(arch_name, granularity):
    plain = make(arch_name).train()
    model = layerdrop.apply(make(arch_name), rate=0.5, granularity=granularity)
    assert _gates(model) and (granularity != "head" or len(_head_hooks(model)) == NUM_LAYERS)
    layerdrop.remove(model).train()
    assert layerdrop.state_of(model) is None and not hasattr(model.config, CONFIG_KEY)
    assert not _gates(model) and not _head_hooks(model)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    ids = tokens()
    torch.testing.assert_close(logits(model, ids), logits(plain, ids))


def test_sublayer_forward_put_there_by_another_library_is_kept():
    model = make("llama")
    attention = _layers(model)[1].self_attn
    calls = []

    def outer(*args, **kwargs):  # what accelerate's hooks do to a submodule
        calls.append(1)
        return type(attention).forward(attention, *args, **kwargs)

    attention.forward = outer
    layerdrop.apply(model, rate=0.0, granularity="sublayer").train()
    model(input_ids=tokens())
    assert calls == [1]
    layerdrop.remove(model)
    assert attention.__dict__["forward"] is outer


def test_bert_chunked_feed_forward_runs_through_the_method_gate():
    """transformers counts feed_forward_chunk's parameters; the gate shows the method's signature."""
    ids = tokens(length=8)
    expected = logits(make("bert").eval(), ids)
    model = layerdrop.apply(make("bert"), rate=0.5, granularity="sublayer").eval()
    for layer in _layers(model):
        layer.chunk_size_feed_forward = 2
    torch.testing.assert_close(logits(model, ids), expected)


def test_sublayer_rescale_scales_kept_sublayer_outputs_in_training():
    """Residual outside (Llama): a kept sublayer's output is divided by 1 - rate, as if its
    last projection were scaled by that."""
    rate = 0.4
    model = layerdrop.apply(make("llama"), rate=rate, seed=5, rescale=True, granularity="sublayer").train()
    ids = tokens()
    out = logits(model, ids)
    keep = model.layerdrop_state.mask.sublayers
    plain = _drop_sublayers_by_hand("llama", make("llama").eval(), keep)
    for layer, layer_keep in zip(_layers(plain), keep, strict=True):
        for path, kept in zip(_LAST_PROJECTION["llama"], layer_keep, strict=True):
            if kept:
                with torch.no_grad():
                    layer.get_submodule(path).weight /= 1 - rate
    torch.testing.assert_close(out, logits(plain, ids))
    model.eval()
    torch.testing.assert_close(logits(model, ids), logits(make("llama").eval(), ids))


def test_layers_run_counts_layers_running_any_sublayer():
    model = layerdrop.apply(make("gpt2"), rate=0.6, seed=1, granularity="sublayer").train()
    total = 0
    for _ in range(6):
        model(input_ids=tokens(length=3))
        total += sum(any(k) for k in model.layerdrop_state.mask.sublayers)
    assert model.layerdrop_state.layers_run == total


# --- head ------------------------------------------------------------------------------


def test_masking_heads_equals_zeroing_output_projection_columns(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=1, granularity="head").train()
    ids = tokens()
    for _ in range(3):
        out = logits(model, ids)
        keep = model.layerdrop_state.mask.heads
        assert not all(all(k) for k in keep)
        expected = logits(_zero_heads_by_hand(make(arch_name).eval(), keep), ids)
        torch.testing.assert_close(out, expected, msg=str(keep))


def test_all_heads_kept_equals_the_plain_model(arch_name):
    ids = tokens()
    expected = logits(make(arch_name).eval(), ids)
    model = layerdrop.apply(make(arch_name), rate=0.0, granularity="head").train()
    torch.testing.assert_close(logits(model, ids), expected)
    assert all(all(k) for k in model.layerdrop_state.mask.heads)
    assert model.layerdrop_state.mask.head_scale is None  # the hooks had nothing to do
    model = layerdrop.apply(make(arch_name), rate=0.9, granularity="head").eval()
    torch.testing.assert_close(logits(model, ids), expected)


def _module_calls(model, steps):
    """Calls into each module of each layer over ``steps`` training forwards."""
    modules = [m for layer in _layers(model) for m in layer.modules()]
    calls = [0] * len(modules)
    for k, m in enumerate(modules):
        m.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
    for _ in range(steps):
        model(input_ids=tokens())
    return calls


def test_head_masking_saves_no_compute(arch_name):
    steps = 3
    model = layerdrop.apply(make(arch_name), rate=0.9, seed=0, granularity="head").train()
    assert _module_calls(model, steps) == _module_calls(make(arch_name).train(), steps)
    state = model.layerdrop_state
    assert state.mask.keep == (True,) * NUM_LAYERS and state.layers_run == steps * NUM_LAYERS


def test_head_drop_frequency_matches_rates():
    """With at least one head kept per layer, a head drops with rate - rate**H / H."""
    rates = [0.1, 0.3, 0.5, 0.7]
    state = layerdrop.apply(make("bert"), rates=rates, granularity="head").layerdrop_state
    n = 2000
    dropped = torch.zeros(NUM_LAYERS, HEADS)
    for _ in range(n):
        state.begin_forward(training=True)
        dropped += ~torch.tensor(state.mask.heads)
    r = torch.tensor(rates)
    expected = r - r**HEADS / HEADS
    tol = 4 * torch.sqrt(expected * (1 - expected) / n)  # at most 0.045 here
    assert torch.all((dropped / n - expected[:, None]).abs() <= tol[:, None]), dropped / n


def test_at_least_one_head_per_layer_is_kept():
    g = torch.Generator().manual_seed(0)
    rates = torch.full((4,), 0.95, dtype=torch.float64)
    masks = [sample_part_mask(rates, HEADS, g, min_parts=1) for _ in range(300)]
    assert all(bool(m.any(1).all()) for m in masks)
    assert any(int(m.sum()) == 4 for m in masks)  # often exactly the one rescued head per layer


def test_head_rescale_scales_kept_heads_by_one_over_keep_probability():
    rates = [0.2, 0.4, 0.5, 0.6]
    model = layerdrop.apply(make("gpt2"), rates=rates, seed=3, rescale=True, granularity="head").train()
    ids = tokens()
    out = logits(model, ids)
    scale = [1 / (1 - r) for r in rates]
    expected = logits(_zero_heads_by_hand(make("gpt2").eval(), model.layerdrop_state.mask.heads, scale), ids)
    torch.testing.assert_close(out, expected)


# --- both ------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_same_seed_same_masks_and_a_fixed_number_of_draws(granularity):
    ids = tokens(length=3)

    def masks(model_seed, seed, min_layers):
        model = layerdrop.apply(make("qwen2", seed=model_seed), rate=0.6, seed=seed, min_layers=min_layers,
                                granularity=granularity).train()
        torch_state, py_state = torch.get_rng_state(), random.getstate()
        out = []
        for _ in range(6):
            model(input_ids=ids)
            state = model.layerdrop_state
            out.append(state.mask.sublayers if granularity == "sublayer" else state.mask.heads)
        assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
        return out, state.generator.get_state()

    a, ga = masks(0, 7, 1)
    b, _ = masks(9, 7, 1)
    c, _ = masks(0, 8, 1)
    _, g_all = masks(0, 7, NUM_LAYERS)
    assert a == b and a != c
    assert torch.equal(ga, g_all)  # the same draws whatever min_layers
    parts = 2 if granularity == "sublayer" else HEADS
    g = torch.Generator().manual_seed(7)
    for _ in range(6):
        torch.rand((NUM_LAYERS, parts), generator=g, dtype=torch.float64)
    assert torch.equal(g.get_state(), ga)


def test_unknown_granularity_is_rejected_with_the_valid_values():
    model = make("bert")
    with pytest.raises(ValueError, match=r"granularity='heads' is not one of 'layer', 'sublayer', 'head'"):
        layerdrop.apply(model, granularity="heads")
    assert layerdrop.state_of(model) is None
    with pytest.raises(ValueError, match="granularity"):
        layerdrop.LayerDropSettings(rates=(0.1,), granularity="block")


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_finer_granularity_on_a_custom_path_model_is_rejected(granularity):
    model = layerdrop.apply(Custom(), rate=0.5, layers="encoder.blocks")
    with pytest.raises(ValueError, match=r"not supported.*granularity='layer'"):
        layerdrop.apply(model, layers="encoder.blocks", granularity=granularity)
    # the failed call left the previous settings in force
    assert model.layerdrop_state.settings.granularity == "layer"
    model.train()(torch.randn(2, 8))
    assert model.layerdrop_state.draws == 1


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_arch_row_without_the_columns_is_rejected(monkeypatch, granularity):
    import layerdrop.core.arch as arch

    bare = tuple(dataclasses.replace(row, sublayers=(), head_proj=None) for row in arch.ARCHITECTURES)
    monkeypatch.setattr(arch, "ARCHITECTURES", bare)
    with pytest.raises(ValueError, match="column"):
        layerdrop.apply(make("bert"), granularity=granularity)
    layerdrop.apply(make("bert"))  # whole layers still work


def test_row_path_missing_from_the_blocks_is_explained_and_changes_nothing(monkeypatch):
    import layerdrop.core.arch as arch

    wrong = (Sublayer("attention", "attn", skipped="zeros", returns_tuple=True),
             Sublayer("feed_forward", "no_such_mlp", skipped="zeros"))
    rows = tuple(dataclasses.replace(row, sublayers=wrong) for row in arch.ARCHITECTURES)
    monkeypatch.setattr(arch, "ARCHITECTURES", rows)
    model = layerdrop.apply(make("gpt2"), rate=0.3)
    with pytest.raises(ValueError, match="no_such_mlp"):
        layerdrop.apply(model, granularity="sublayer")
    with pytest.raises(ValueError, match="no_such_proj"):
        monkeypatch.setattr(arch, "ARCHITECTURES", tuple(
            dataclasses.replace(row, head_proj="attn.no_such_proj") for row in arch.ARCHITECTURES))
        layerdrop.apply(model, granularity="head")
    # the model keeps its previous settings, gates and record
    assert model.layerdrop_state.settings.granularity == "layer" and len(_gates(model)) == NUM_LAYERS
    assert getattr(model.config, CONFIG_KEY)["granularity"] == "layer"


def test_sublayer_kind_must_be_identity_or_zeros():
    with pytest.raises(ValueError, match="identity"):
        Sublayer("attention", "attn", skipped="none")


def test_docs_name_every_sublayer_and_head_projection():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "granularity.md").read_text()
    for row in layerdrop.ARCHITECTURES:
        assert f"`{row.head_proj}`" in text, row.head_proj
        for sublayer in row.sublayers:
            assert f"`{sublayer.path}`" in text and f'"{sublayer.skipped}"' in text, sublayer


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_granularity_is_recorded_and_rearms_after_reload(tmp_path, arch_name, granularity):
    model = layerdrop.apply(make(arch_name), rate=0.3, seed=11, granularity=granularity)
    assert getattr(model.config, CONFIG_KEY)["granularity"] == granularity
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert layerdrop.state_of(reloaded) is None and not _gates(reloaded)
    layerdrop.apply(reloaded)
    assert reloaded.layerdrop_state.settings == model.layerdrop_state.settings
    assert len(_gates(reloaded)) == len(_gates(model))
    assert len(_head_hooks(reloaded)) == len(_head_hooks(model))
    layerdrop.apply(reloaded, granularity="layer")  # explicit beats recorded
    assert reloaded.layerdrop_state.settings.granularity == "layer"
    assert len(_gates(reloaded)) == NUM_LAYERS and not _head_hooks(reloaded)


def test_settings_recorded_before_granularity_existed_mean_layer():
    model = make("bert")
    setattr(model.config, CONFIG_KEY, {"rates": [0.1] * NUM_LAYERS, "seed": 3, "min_layers": 1,
                                       "rescale": False, "layers": None})
    assert layerdrop.apply(model).layerdrop_state.settings.granularity == "layer"


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_only_layers_and_prune_stay_layer_level(arch_name, granularity):
    model = layerdrop.apply(make(arch_name), rate=0.7, seed=1, granularity=granularity).train()
    ids = tokens()
    with layerdrop.only_layers(model, [0, 2]):
        part = logits(model, ids)
        state = model.layerdrop_state
        assert state.mask.keep == (True, False, True, False) and state.draws == 0
        assert all(all(k) for k in (state.mask.sublayers or state.mask.heads))  # kept layers run whole
    pruned = layerdrop.prune(model, keep=[0, 2])
    assert layerdrop.state_of(pruned) is None and not _gates(pruned) and not _head_hooks(pruned)
    torch.testing.assert_close(logits(pruned.eval(), ids), part)
    layerdrop.apply(pruned)
    assert pruned.layerdrop_state.settings.granularity == granularity


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_deepcopy_gates_follow_the_copy(granularity):
    model = layerdrop.apply(make("distilbert"), rate=0.5, granularity=granularity).train()
    twin = copy.deepcopy(model)
    assert all(getattr(m, n).state is twin.layerdrop_state for m, n in _gates(twin))
    assert all(h.state is twin.layerdrop_state for h in _head_hooks(twin))
    ids = {"input_ids": tokens()}
    for _ in range(3):
        torch.testing.assert_close(model(**ids).logits, twin(**ids).logits)


def test_generate_is_unchanged_in_eval(decoder_name):
    model = make(decoder_name).eval()
    ids = tokens(batch=1)
    expected = model.generate(ids, max_new_tokens=4, do_sample=False)
    for granularity in ("sublayer", "head"):
        layerdrop.apply(model, rate=0.5, granularity=granularity)
        torch.testing.assert_close(model.generate(ids, max_new_tokens=4, do_sample=False), expected)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients_with_sublayers(name):
    grads = []
    for checkpointing in (False, True):
        model = layerdrop.apply(make(name), rate=0.5, seed=6, granularity="sublayer").train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            logits(model, tokens()).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        if g is None:
            assert grads[1][n] is None, n
        else:
            torch.testing.assert_close(grads[1][n], g, msg=n)
