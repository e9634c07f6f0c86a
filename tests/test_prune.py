import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import layerdrop
from conftest import DECODERS, NUM_LAYERS, Custom, logits, make, tokens
from layerdrop.cut.prune import PRUNING_KEY, view


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("keep", [[0, 2, 3], [1], [0, 1, 2, 3], [3, 0]])
def test_pruned_model_matches_restricted_full_model(arch_name, keep):
    model = layerdrop.apply(make(arch_name), rate=0.3).eval()
    ids = tokens()
    with layerdrop.only_layers(model, keep):
        expected = logits(model, ids)
    pruned = layerdrop.prune(model, keep=keep).eval()
    torch.testing.assert_close(logits(pruned, ids), expected, rtol=1e-5, atol=1e-5)


def test_pruning_does_not_touch_the_original(arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.3).eval()
    ids = tokens()
    before = logits(model, ids)
    keys = list(model.state_dict())
    layerdrop.prune(model, depth=2)
    torch.testing.assert_close(logits(model, ids), before)
    assert list(model.state_dict()) == keys
    assert len(layerdrop.find_layers(model).layers) == NUM_LAYERS
    assert layerdrop.state_of(model) is not None


def test_pruned_model_has_fewer_parameters_and_updated_config(arch_name):
    model = make(arch_name)
    pruned = layerdrop.prune(model, depth=2)
    per_layer = _n_params(layerdrop.find_layers(model).layers[0])
    assert _n_params(model) - _n_params(pruned) == 2 * per_layer
    assert pruned.config.num_hidden_layers == 2
    assert getattr(pruned.config, PRUNING_KEY) == {"kept_layers": [0, 3], "original_num_layers": NUM_LAYERS}
    layer_types = getattr(pruned.config, "layer_types", None)
    assert layer_types is None or len(layer_types) == 2


def test_pruned_model_is_plain_and_can_be_rearmed_with_kept_rates():
    model = layerdrop.apply(make("bert"), rates=[0.0, 0.1, 0.2, 0.3], seed=4)
    pruned = layerdrop.prune(model, keep=[1, 3])
    assert layerdrop.state_of(pruned) is None
    assert all("forward" not in layer.__dict__ for layer in layerdrop.find_layers(pruned).layers)
    layerdrop.apply(pruned)
    assert pruned.layerdrop_state.settings.rates == (0.1, 0.3)
    assert pruned.layerdrop_state.settings.seed == 4


def test_pruning_twice_records_original_indices():
    twice = layerdrop.prune(layerdrop.prune(make("llama"), keep=[0, 2, 3]), keep=[0, 2])
    assert getattr(twice.config, PRUNING_KEY) == {"kept_layers": [0, 3], "original_num_layers": NUM_LAYERS}


def test_decoder_layer_indices_are_renumbered(decoder_name):
    pruned = layerdrop.prune(make(decoder_name), keep=[1, 3])
    for new_index, layer in enumerate(layerdrop.find_layers(pruned).layers):
        found = [m.layer_idx for m in layer.modules() if isinstance(m.__dict__.get("layer_idx"), int)]
        assert found and set(found) == {new_index}


def test_pruned_decoder_generates_with_kv_cache(decoder_name):
    pruned = layerdrop.prune(layerdrop.apply(make(decoder_name), rate=0.5), keep=[0, 3]).eval()
    ids = tokens(batch=1)
    cached = pruned.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = pruned.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (1, ids.shape[1] + 8)
    torch.testing.assert_close(cached, uncached)


def test_vanilla_reload_of_pruned_model(tmp_path, arch_name):
    model = layerdrop.apply(make(arch_name), rate=0.2).eval()
    pruned = layerdrop.prune(model, depth=3).eval()
    pruned.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if arch_name in DECODERS else AutoModelForSequenceClassification
    reloaded, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(reloaded) is type(model)
    assert reloaded.config.num_hidden_layers == 3
    ids = tokens()
    torch.testing.assert_close(logits(reloaded.eval(), ids), logits(pruned, ids))


def test_custom_model_prunes_by_path():
    model = Custom().eval()
    x = torch.randn(2, 8)
    with layerdrop.only_layers(model, [0, 3], layers="encoder.blocks"):
        expected = model(x)
    pruned = layerdrop.prune(model, keep=[0, 3], layers="encoder.blocks")
    assert len(pruned.encoder.blocks) == 2
    torch.testing.assert_close(pruned(x), expected)


def test_custom_model_applied_with_a_path_prunes_without_repeating_it():
    model = layerdrop.apply(Custom(), rate=0.2, layers="encoder.blocks")
    assert len(layerdrop.prune(model, depth=1).encoder.blocks) == 1


@pytest.mark.parametrize(
    ("num_layers", "depth", "expected"),
    [
        (6, 6, (0, 1, 2, 3, 4, 5)),
        (6, 5, (0, 1, 3, 4, 5)),
        (6, 4, (0, 2, 3, 5)),
        (6, 3, (0, 3, 5)),
        (6, 2, (0, 5)),
        (6, 1, (0,)),
        (7, 4, (0, 2, 4, 6)),  # odd L at half depth: exactly every other layer
        (12, 6, (0, 2, 4, 7, 9, 11)),
        (12, 4, (0, 4, 7, 11)),
        (30, 15, (0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29)),
    ],
)
def test_every_other_keeps_documented_indices(num_layers, depth, expected):
    assert layerdrop.every_other(num_layers, depth) == expected


def test_every_other_keeps_both_ends_and_spreads_evenly():
    for num_layers in range(1, 33):
        for depth in range(1, num_layers + 1):
            kept = layerdrop.every_other(num_layers, depth)
            assert len(kept) == depth == len(set(kept)) and list(kept) == sorted(kept)
            assert kept[0] == 0
            if depth > 1:
                assert kept[-1] == num_layers - 1
            gaps = [b - a for a, b in zip(kept, kept[1:], strict=False)]  # neighbours: kept[1:] is one shorter
            assert not gaps or max(gaps) - min(gaps) <= 1


@pytest.mark.parametrize("depth", [0, -1, NUM_LAYERS + 1, 2.0, True])
def test_bad_depth_is_rejected(depth):
    with pytest.raises(ValueError, match=f"from 1 to {NUM_LAYERS}"):
        layerdrop.prune(make("bert"), depth=depth)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ([], "keep is empty"),
        ([0, 4], "out of range"),
        ([-1], "out of range"),
        ([1, 1, 2], "more than once"),
        (["1"], "not an integer"),
        ("0,1", "list of layer indices"),
    ],
)
def test_bad_keep_lists_are_rejected(keep, message):
    with pytest.raises(ValueError, match=message):
        layerdrop.prune(make("bert"), keep=keep)


def test_depth_and_keep_are_exclusive():
    with pytest.raises(ValueError, match="exactly one"):
        layerdrop.prune(make("bert"), depth=2, keep=[0, 1])
    with pytest.raises(ValueError, match="exactly one"):
        layerdrop.prune(make("bert"))


# -------------------------------------------------- pruning never touches its input (issue 12, bug 2)


def _tree(model):
    """The module tree: names and identities, and every parameter's storage and values."""
    return ([(name, id(module)) for name, module in model.named_modules()],
            {name: (p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()})


def _same_tree(model, before):
    names, params = _tree(model)
    assert names == before[0]
    assert params.keys() == before[1].keys()
    assert all(ptr == before[1][k][0] and torch.equal(v, before[1][k][1]) for k, (ptr, v) in params.items())


def test_pruning_leaves_the_layer_list_intact_even_while_it_copies(monkeypatch, decoder_name):
    import copy

    model = layerdrop.apply(make(decoder_name), rate=0.3)
    site = layerdrop.find_layers(model)
    blocks = list(site.layers)
    deepcopy = copy.deepcopy
    seen = []

    def watching(obj, memo=None, _nil=None):  # runs at every step of the copy
        now = layerdrop.find_layers(model)
        seen.append(now.layers is site.layers and list(now.layers) == blocks)
        return deepcopy(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", watching)
    layerdrop.prune(model, keep=[0, 2])
    assert seen and all(seen)


def test_pruning_never_copies_a_dropped_block():
    model = make("llama")
    before = _tree(model)
    layers = layerdrop.find_layers(model).layers

    def refuse(memo):
        raise AssertionError("a dropped block was copied")

    for i in (1, 3):
        object.__setattr__(layers[i], "__deepcopy__", refuse)  # copy.deepcopy looks it up on the instance
    try:
        pruned = layerdrop.prune(model, keep=[0, 2])
    finally:
        for i in (1, 3):
            object.__delattr__(layers[i], "__deepcopy__")
    assert len(layerdrop.find_layers(pruned).layers) == 2
    _same_tree(model, before)
    shared = {p.data_ptr() for p in model.parameters()} & {p.data_ptr() for p in pruned.parameters()}
    assert not shared  # the result owns its weights


# --------------------------------------------------------------------------- a weight-sharing view


def test_a_view_shares_every_parameter_and_leaves_the_model_untouched(decoder_name):
    model = make(decoder_name).eval()
    before = _tree(model)
    small = view(model, keep=[0, 3])
    layers = layerdrop.find_layers(model).layers
    assert list(layerdrop.find_layers(small).layers) == [layers[0], layers[3]]
    assert {p.data_ptr() for p in small.parameters()} <= {p.data_ptr() for p in model.parameters()}
    ids = tokens(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits,
                                   layerdrop.prune(model, keep=[0, 3]).eval()(input_ids=ids).logits)
    _same_tree(model, before)


@pytest.mark.parametrize("cut", [lambda m: view(m, keep=[0, 3]), lambda m: layerdrop.prune(m, keep=[0, 3])],
                         ids=["view", "prune"])
def test_a_cut_of_a_model_in_eval_mode_is_in_eval_mode_everywhere(cut):
    # generate() copies a model it finds in training mode: a view that looked so was copied per call
    model = make("llama").eval()
    assert not [name for name, module in cut(model).named_modules() if module.training]
    assert all(module.training for module in cut(model.train()).modules())


def test_a_view_without_layer_0_is_refused():
    with pytest.raises(ValueError, match="keep layer 0"):
        view(make("llama"), keep=[1, 3])
