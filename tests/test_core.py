import copy
import random

import pytest
import torch
from torch import nn

import layerdrop
from conftest import NUM_LAYERS, Block, Custom, logits, make, tokens
from layerdrop.core.apply import CONFIG_KEY, scale_rates
from layerdrop.core.mask import Mask, sample_keep_mask
from layerdrop.core.rates import layer_rates


def _layers(model):
    return layerdrop.find_layers(model).layers


def _count_calls(layer_list):
    """Count calls into each layer's submodules: a skipped layer computes nothing."""
    counts = [0] * len(layer_list)
    for i, layer in enumerate(layer_list):
        for module in layer.modules():
            if module is not layer:
                module.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_skipped_layer_is_never_called(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=3).train()
    counts = _count_calls(_layers(model))
    ran_any_skip = False
    for _ in range(6):
        before = list(counts)
        model(input_ids=tokens())
        keep = model.layerdrop_state.mask.keep
        for i, kept in enumerate(keep):
            assert (counts[i] > before[i]) == kept
        ran_any_skip |= not all(keep)
    assert ran_any_skip


def test_eval_mode_runs_every_layer(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.9 - 1e-9).eval()
    counts = _count_calls(_layers(model))
    for _ in range(3):
        model(input_ids=tokens())
    assert all(c > 0 for c in counts)
    assert model.layerdrop_state.draws == 0


def test_training_output_equals_unscaled_subnetwork(arch_name):
    """No rescaling: a training forward is exactly the kept sub-network (dropout is off)."""
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=1).train()
    ids = tokens()
    for _ in range(4):
        out = logits(model, ids)
        keep = [i for i, k in enumerate(model.layerdrop_state.mask.keep) if k]
        with layerdrop.only_layers(model, keep):
            expected = logits(model, ids)
        torch.testing.assert_close(out, expected)


def test_skipped_layers_get_no_gradient(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=4).train()
    layers = _layers(model)
    for _ in range(10):
        model.zero_grad(set_to_none=True)
        logits(model, tokens()).sum().backward()
        keep = model.layerdrop_state.mask.keep
        if not all(keep):
            break
    for layer, kept in zip(layers, keep, strict=True):
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None for g in grads) if kept else all(g is None for g in grads)


def test_sampled_drop_frequency_matches_rate():
    rates = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 4000
    dropped = sum((~sample_keep_mask(rates, g)).double() for _ in range(n)) / n
    # 4 standard deviations of a binomial frequency, at most 0.032 here
    tol = 4 * torch.sqrt(rates * (1 - rates) / n) + 1e-9
    assert torch.all((dropped - rates).abs() <= tol), dropped


def test_model_drop_frequency_matches_per_layer_rates():
    model = layerdrop.apply(Custom(), rates=[0.1, 0.6, 0.3, 0.8], min_layers=0, layers="encoder.blocks").train()
    n = 1500
    dropped = torch.zeros(NUM_LAYERS)
    x = torch.randn(2, 8)
    for _ in range(n):
        model(x)
        dropped += ~torch.tensor(model.layerdrop_state.mask.keep)
    freq = dropped / n
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.3, 0.8]), atol=0.045), freq


def test_min_layers_guarantees_that_many_layers_run():
    g = torch.Generator().manual_seed(0)
    rates = torch.full((6,), 0.95, dtype=torch.float64)
    for _ in range(200):
        assert int(sample_keep_mask(rates, g, min_layers=2).sum()) >= 2


def test_min_layers_zero_may_drop_every_layer():
    g = torch.Generator().manual_seed(0)
    rates = torch.full((3,), 0.9, dtype=torch.float64)
    assert any(int(sample_keep_mask(rates, g, 0).sum()) == 0 for _ in range(200))


def test_mask_draw_count_does_not_depend_on_min_layers():
    rates = torch.full((4,), 0.9, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(50):
        sample_keep_mask(rates, g1, 0)
        sample_keep_mask(rates, g2, 4)
    assert torch.equal(g1.get_state(), g2.get_state())


def _masks(model, steps, x):
    out = []
    for _ in range(steps):
        model(**x) if isinstance(x, dict) else model(x)
        out.append(model.layerdrop_state.mask.keep)
    return out


def test_same_seed_gives_same_masks_and_other_seed_differs(arch_name):
    x = {"input_ids": tokens()}
    a = _masks(layerdrop.apply(make(arch_name), rate=0.5, seed=7).train(), 12, x)
    b = _masks(layerdrop.apply(make(arch_name, seed=9), rate=0.5, seed=7).train(), 12, x)
    c = _masks(layerdrop.apply(make(arch_name), rate=0.5, seed=8).train(), 12, x)
    assert a == b
    assert a != c


def test_global_and_python_rngs_are_untouched(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5).train()
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    for _ in range(5):
        model(input_ids=tokens())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state


def test_rng_state_roundtrip_repeats_masks():
    model = layerdrop.apply(Custom(), rate=0.5, layers="encoder.blocks").train()
    x = torch.randn(2, 8)
    _masks(model, 5, x)
    saved = layerdrop.get_rng_state(model)
    first = _masks(model, 10, x)
    layerdrop.set_rng_state(model, saved)
    assert _masks(model, 10, x) == first
    assert layerdrop.get_rng_state(model)["draws"] == 15


def test_rng_state_needs_layerdrop_applied():
    with pytest.raises(ValueError, match="layerdrop.apply"):
        layerdrop.get_rng_state(Custom())


def test_module_types_and_state_dict_keys_are_unchanged(arch_name):
    plain, applied = make(arch_name), layerdrop.apply(make(arch_name), rate=0.3)
    assert [type(m) for m in plain.modules()] == [type(m) for m in applied.modules()]
    assert list(plain.state_dict()) == list(applied.state_dict())


def test_remove_restores_the_plain_model(arch_name):
    plain = make(arch_name).train()
    model = layerdrop.remove(layerdrop.apply(make(arch_name), rate=0.5))
    model.train()
    assert layerdrop.state_of(model) is None
    assert not hasattr(model.config, CONFIG_KEY)
    site = layerdrop.find_layers(model)
    assert all("forward" not in layer.__dict__ for layer in site.layers)
    assert not site.owner._forward_pre_hooks and not model._forward_hooks
    ids = tokens()
    torch.testing.assert_close(logits(model, ids), logits(plain, ids))


def test_apply_twice_replaces_the_settings():
    model = layerdrop.apply(Custom(), rate=0.5, seed=1, layers="encoder.blocks")
    layerdrop.apply(model, rate=0.1, seed=2, layers="encoder.blocks")
    state = model.layerdrop_state
    assert state.settings.rates == (0.1,) * NUM_LAYERS and state.settings.seed == 2
    assert len(model.encoder._forward_pre_hooks) == len(model._forward_pre_hooks) == 1
    # one gate per layer, not a gate around a gate
    assert all(layer.__dict__["forward"].inner is None for layer in model.encoder.blocks)


@pytest.mark.parametrize("per_layer", ["uniform", "linear", "exponential"])
def test_rate_profiles_are_applied(per_layer):
    model = layerdrop.apply(Custom(), rate=0.4, per_layer=per_layer, layers="encoder.blocks")
    assert model.layerdrop_state.settings.rates == layer_rates(NUM_LAYERS, 0.4, per_layer=per_layer)


def test_rates_of_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="one rate per layer"):
        layerdrop.apply(make("bert"), rates=[0.1, 0.2])


def test_rate_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        layerdrop.apply(make("bert"), rate=1.0)


def test_min_layers_above_depth_is_rejected():
    with pytest.raises(ValueError, match="min_layers"):
        layerdrop.apply(make("bert"), rate=0.2, min_layers=NUM_LAYERS + 1)


def test_rescale_scales_kept_layer_updates_in_training_only():
    torch.manual_seed(0)
    model = layerdrop.apply(Custom(), rate=0.5, rescale=True, layers="encoder.blocks", seed=2)
    block = model.encoder.blocks[0]
    x = torch.randn(3, 8)
    plain_update = torch.tanh(block.fc(x))
    model.eval()
    torch.testing.assert_close(block(x), x + plain_update)
    model.train()
    model.layerdrop_state.mask = Mask(keep=(True,) * NUM_LAYERS, rates=(0.5,) * NUM_LAYERS, sampled=True)
    torch.testing.assert_close(block(x), x + plain_update / 0.5)


def test_settings_are_recorded_in_config_and_rearm_after_reload(tmp_path, arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.3, per_layer="linear", seed=11, min_layers=2)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert layerdrop.state_of(reloaded) is None  # a vanilla model until re-armed
    layerdrop.apply(reloaded)
    assert reloaded.layerdrop_state.settings == model.layerdrop_state.settings


def test_explicit_arguments_override_the_recorded_settings():
    model = layerdrop.apply(make("bert"), rate=0.3, seed=11)
    layerdrop.apply(model, seed=5)
    assert model.layerdrop_state.settings.rates == (0.3,) * NUM_LAYERS
    assert model.layerdrop_state.settings.seed == 5


def test_default_rate_is_the_papers_0_2():
    assert layerdrop.apply(make("bert")).layerdrop_state.settings.rates == (0.2,) * NUM_LAYERS


def test_only_layers_restores_the_model_on_exit():
    model = Custom()
    x = torch.randn(2, 8)
    full = model(x)
    with layerdrop.only_layers(model, [1, 3], layers="encoder.blocks"):
        part = model(x)
    assert not torch.allclose(full, part)
    assert layerdrop.state_of(model) is None
    torch.testing.assert_close(model(x), full)


def test_only_layers_overrides_sampling_in_training():
    model = layerdrop.apply(Custom(), rate=0.5, layers="encoder.blocks").train()
    with layerdrop.only_layers(model, [0, 2]):
        model(torch.randn(1, 8))
        assert model.layerdrop_state.mask.keep == (True, False, True, False)
        assert model.layerdrop_state.draws == 0


def test_deepcopy_gives_an_independent_generator():
    model = layerdrop.apply(Custom(), rate=0.5, layers="encoder.blocks").train()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 8)
    assert _masks(model, 8, x) == _masks(twin, 8, x)
    assert twin.encoder.blocks[0].forward.state is twin.layerdrop_state


def test_layers_wrapped_by_another_library_keep_their_forward():
    model = Custom()
    calls = []
    block = model.encoder.blocks[0]

    def outer(x):  # what accelerate's hooks do: an instance forward around the class forward
        calls.append(1)
        return Block.forward(block, x)

    block.forward = outer
    layerdrop.apply(model, rate=0.0, layers="encoder.blocks")
    model(torch.randn(1, 8))
    assert calls == [1]
    layerdrop.remove(model)
    assert block.forward is outer


def test_hf_trainer_trains_an_applied_model(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = layerdrop.apply(make("bert"), rate=0.5)
    ids = tokens(batch=16, length=6)
    data = [{"input_ids": ids[i], "labels": torch.tensor(i % 3)} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    before = copy.deepcopy(model.state_dict())
    Trainer(model=model, args=args, train_dataset=data).train()
    assert model.layerdrop_state.draws == 4
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_peft_lora_wraps_an_applied_model():
    peft = pytest.importorskip("peft")
    model = layerdrop.apply(make("llama"), rate=0.5, seed=0).train()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    counts = _count_calls(_layers(model))
    lora(input_ids=tokens()).logits.sum().backward()
    keep = model.layerdrop_state.mask.keep
    assert [c > 0 for c in counts] == list(keep)
    assert any(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)


def test_generate_works_on_an_applied_decoder(decoder_name):
    model = make(decoder_name).eval()
    ids = tokens(batch=1)
    expected = model.generate(ids, max_new_tokens=5, do_sample=False)
    layerdrop.apply(model, rate=0.5)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=5, do_sample=False), expected)


def test_custom_model_gate_passes_hidden_states_through():
    model = layerdrop.apply(Custom(), rate=0.5, layers="encoder.blocks").train()
    model.layerdrop_state.fixed = (False,) * NUM_LAYERS
    x = torch.randn(2, 8)
    torch.testing.assert_close(model(x), model.head(x))


def test_models_with_an_nn_module_container_other_than_a_list_are_explained():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="layers="):
        layerdrop.apply(model)


def test_a_forward_that_raises_does_not_stop_later_sampling():
    model = layerdrop.apply(Custom(), rate=0.5, layers="encoder.blocks").train()
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5))  # wrong width
    model(torch.randn(2, 8))
    model(torch.randn(2, 8))
    assert model.layerdrop_state.draws == 3 and model.layerdrop_state.depth == 0


def test_one_mask_per_forward_when_model_and_inner_module_are_hooked():
    model = layerdrop.apply(make("bert"), rate=0.5).train()
    model(input_ids=tokens())
    assert model.layerdrop_state.draws == 1
    model.bert(input_ids=tokens())  # calling the base model directly samples too
    assert model.layerdrop_state.draws == 2


def test_gradient_checkpointing_gives_the_same_gradients(arch_name):
    grads = []
    for checkpointing in (False, True):
        model = layerdrop.apply(make(arch_name), rate=0.5, seed=6).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in _layers(model))
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            logits(model, tokens()).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        if g is None:
            assert grads[1][name] is None, name
        else:
            torch.testing.assert_close(grads[1][name], g, msg=name)


def test_scale_rates_multiplies_rates_without_resetting_the_generator():
    model = layerdrop.apply(Custom(), rate=0.6, layers="encoder.blocks", min_layers=0).train()
    x = torch.randn(1, 8)
    scale_rates(model, 0.0)
    assert all(all(m) for m in _masks(model, 20, x))  # rate 0: nothing dropped
    assert model.layerdrop_state.draws == 20  # but the generator advanced
    scale_rates(model, 0.5)
    assert model.layerdrop_state.rates == pytest.approx((0.3,) * NUM_LAYERS)


def test_scale_factor_outside_unit_interval_is_rejected():
    model = layerdrop.apply(Custom(), rate=0.6, layers="encoder.blocks")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scale_rates(model, 1.5)


def test_layers_run_counts_layers_of_training_forwards():
    model = layerdrop.apply(Custom(), rate=0.5, layers="encoder.blocks").train()
    masks = _masks(model, 10, torch.randn(1, 8))
    assert model.layerdrop_state.layers_run == sum(sum(m) for m in masks)


def test_every_other_pattern_trains_exactly_the_subnetworks_pruning_keeps(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.5, seed=2, pattern="every-other").train()
    counts = _count_calls(_layers(model))
    seen = set()
    for _ in range(30):
        before = list(counts)
        model(input_ids=tokens())
        kept = tuple(i for i, k in enumerate(model.layerdrop_state.mask.keep) if k)
        assert kept == layerdrop.every_other(NUM_LAYERS, len(kept))
        assert [counts[i] > before[i] for i in range(NUM_LAYERS)] == list(model.layerdrop_state.mask.keep)
        seen.add(len(kept))
    assert len(seen) >= 3  # the depth still varies from step to step


def test_every_other_pattern_keeps_as_many_layers_as_the_random_draw():
    x = {"input_ids": tokens()}
    random_masks = _masks(layerdrop.apply(make("bert"), rate=0.5, seed=4).train(), 40, x)
    placed = _masks(layerdrop.apply(make("bert"), rate=0.5, seed=4, pattern="every-other").train(), 40, x)
    assert [sum(m) for m in random_masks] == [sum(m) for m in placed]
    assert random_masks != placed


def test_pattern_is_recorded_and_rearms_after_reload(tmp_path):
    model = layerdrop.apply(make("bert"), rate=0.3, pattern="every-other")
    model.save_pretrained(tmp_path)
    reloaded = layerdrop.apply(type(model).from_pretrained(tmp_path))
    assert reloaded.layerdrop_state.settings.pattern == "every-other"


@pytest.mark.parametrize("kwargs, message", [
    ({"pattern": "alternate"}, "not one of"),
    ({"pattern": "every-other", "granularity": "sublayer"}, "needs granularity='layer'"),
])
def test_bad_pattern_is_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layerdrop.apply(make("bert"), rate=0.5, **kwargs)


def test_explicit_argument_beats_recorded_setting():
    model = layerdrop.apply(make("bert"), rate=0.3, granularity="head", seed=4)
    layerdrop.apply(model, 0.2, granularity="layer")
    assert model.layerdrop_state.settings.granularity == "layer"
    assert model.layerdrop_state.settings.seed == 4  # not given: the recorded one
    layerdrop.apply(model, granularity="head")
    layerdrop.apply(model, 0.2)  # no granularity given: the recorded one stays
    assert model.layerdrop_state.settings.granularity == "head"


def test_explicit_per_layer_is_never_silently_replaced_by_recorded_rates():
    model = layerdrop.apply(make("bert"), rate=0.3)
    with pytest.raises(ValueError, match="rate="):
        layerdrop.apply(model, per_layer="linear")  # the record holds rates, not a rate to reshape
    layerdrop.apply(model, 0.4, per_layer="linear")
    assert model.layerdrop_state.settings.rates == pytest.approx(layerdrop.core.rates.linear_rates(0.4, NUM_LAYERS))
    assert layerdrop.apply(make("bert"), per_layer="linear").layerdrop_state.settings.rates == pytest.approx(
        layerdrop.core.rates.linear_rates(0.2, NUM_LAYERS))  # nothing recorded: the default rate, reshaped


def test_import_layerdrop_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, layerdrop, layerdrop.config.settings; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'apply' in layerdrop.__all__ and 'sample_keep_mask' not in layerdrop.__all__")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top_level_names_resolve_lazily_and_the_cutting_module_is_a_module():
    import types

    import layerdrop.cut.prune as module  # the module of prune and view, importable as a module

    assert isinstance(module, types.ModuleType) and callable(module.view)
    assert layerdrop.prune is module.prune and layerdrop.view is module.view
    assert layerdrop.state_of is layerdrop.core.apply.state_of
    for name in layerdrop.__all__:
        assert getattr(layerdrop, name) is not None
    with pytest.raises(AttributeError):
        _ = layerdrop.no_such_name
