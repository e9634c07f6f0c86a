"""`layerdrop.compile_layers`: each block compiled once, every keep-mask reusing it, the gates outside."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import layerdrop
from conftest import Custom, make, tokens
from layerdrop.core.compile import is_compiled


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(name):
    return {"x": torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))} if name == "custom" \
        else {"input_ids": tokens()}


def _model(name, seed=0):
    if name == "custom":
        torch.manual_seed(seed)
        return Custom()
    return make(name, seed)


def _loss(model, inputs):
    out = model(**inputs)
    return (out if isinstance(out, torch.Tensor) else out.logits).float().square().mean()


def _train(model, inputs, steps):
    """Losses, masks and whether each layer got a gradient, step by step."""
    losses, masks, grads = [], [], []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        loss = _loss(model, inputs)
        loss.backward()
        losses.append(loss.item())
        masks.append(model.layerdrop_state.mask.keep)
        grads.append(tuple(all(p.grad is not None for p in layer.parameters())
                           for layer in layerdrop.find_layers(model, model.layerdrop_state.path).layers))
    return losses, masks, grads


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "custom"])
def test_compiled_and_eager_runs_draw_the_same_masks_and_give_the_same_losses(name):
    layers = {"layers": "encoder.blocks"} if name == "custom" else {}
    eager = layerdrop.apply(_model(name), rate=0.5, seed=4, **layers).train()
    compiled = layerdrop.compile_layers(layerdrop.apply(_model(name), rate=0.5, seed=4, **layers).train(),
                                        backend="aot_eager")
    inputs = _inputs(name)
    want, got = _train(eager, inputs, 6), _train(compiled, inputs, 6)
    assert got[1] == want[1] and len(set(want[1])) > 1  # the same masks, and more than one of them
    torch.testing.assert_close(got[0], want[0])
    assert got[2] == want[2] == [tuple(m) for m in want[1]]  # a skipped layer computed nothing


def test_every_mask_reuses_one_compilation_of_the_blocks():
    counter = CompileCounterWithBackend("eager")
    model = layerdrop.compile_layers(layerdrop.apply(make("bert"), rate=0.5, seed=0).train(), backend=counter)
    masks = set()
    for _ in range(12):
        _loss(model, {"input_ids": tokens()}).backward()
        masks.add(model.layerdrop_state.mask.keep)
    model.eval()
    _loss(model, {"input_ids": tokens()})
    assert len(masks) > 3
    assert 1 <= counter.frame_count <= 2  # training and eval: whatever the masks


@pytest.mark.parametrize("per_call_limit", [True, False], ids=["torch.compile's limit", "raised while running"])
@pytest.mark.parametrize("use_cache", [False, True])
def test_a_decoder_compiles_once_without_a_cache_and_once_per_block_with_one(use_cache, per_call_limit,
                                                                              monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from layerdrop.core import compile as regional

    monkeypatch.setattr(regional, "_PER_CALL_LIMIT", per_call_limit)  # False: as on torch before 2.13

    torch.manual_seed(0)
    blocks = 10  # more than Dynamo's default recompile limit (8): compile_layers raises it for its blocks
    model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=2, num_hidden_layers=blocks))
    counter = CompileCounterWithBackend("eager")
    layerdrop.compile_layers(layerdrop.apply(model, rate=0.5).train(), backend=counter)
    ran = set()
    for _ in range(4):
        model(input_ids=tokens(), labels=tokens(), use_cache=use_cache).loss.backward()
        ran |= {i for i, kept in enumerate(model.layerdrop_state.mask.keep) if kept}
    # with a cache, a block's layer_idx indexes it: a constant of the compiled code, one compilation per block
    assert len(ran) > 8 or not use_cache  # more blocks ran than the default limit would have compiled
    assert counter.frame_count == (len(ran) if use_cache else 1)
    assert torch._dynamo.config.recompile_limit == 8  # for every other compiled code, as it was


def test_whole_model_compile_recompiles_as_masks_change():
    """What compile_layers avoids: torch.compile(model) traces the gates, so new masks recompile."""
    counter = CompileCounterWithBackend("eager")
    model = layerdrop.apply(make("bert"), rate=0.5, seed=0).train()
    compiled = torch.compile(model, backend=counter)
    masks = set()
    for _ in range(12):
        _loss(compiled, {"input_ids": tokens()}).backward()
        masks.add(model.layerdrop_state.mask.keep)
    assert counter.frame_count > len(masks) // 2


def test_compile_before_apply_and_after_remove_keeps_the_blocks_compiled():
    model = layerdrop.compile_layers(make("llama"), backend="eager")
    layerdrop.apply(model, rate=0.5)
    blocks = layerdrop.find_layers(model).layers
    assert all(is_compiled(block.forward.inner) for block in blocks)  # the gate calls the compiled forward
    layerdrop.remove(model)
    assert all(is_compiled(block.forward) for block in blocks)
    compiled = [block.forward.__func__ for block in blocks]
    assert layerdrop.compile_layers(model, backend="eager") is model  # again: nothing changes
    assert [block.forward.__func__ for block in blocks] == compiled and len(set(map(id, compiled))) == 1
    assert [k for k in model.state_dict()] == [k for k in make("llama").state_dict()]


def test_a_pruned_copy_of_a_compiled_model_runs_its_own_blocks():
    model = layerdrop.compile_layers(make("gpt2").eval(), backend="eager")
    small = layerdrop.prune(model, keep=[0, 2]).eval()
    assert all(is_compiled(block.forward) and block.forward.__self__ is block
               for block in layerdrop.find_layers(small).layers)
    with torch.no_grad():
        for p in model.parameters():  # the copy must not be reading these
            p.add_(1.0)
        want = layerdrop.prune(make("gpt2"), keep=[0, 2]).eval()(input_ids=tokens()).logits
        torch.testing.assert_close(small(input_ids=tokens()).logits, want)


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_finer_granularities_are_refused_with_what_to_do(granularity):
    model = layerdrop.apply(make("bert"), rate=0.2, granularity=granularity)
    with pytest.raises(ValueError, match="granularity='layer'"):
        layerdrop.compile_layers(model)
    compiled = layerdrop.compile_layers(make("bert"), backend="eager")  # compiled first, then applied
    with pytest.raises(ValueError, match="granularity='layer'"):
        layerdrop.apply(compiled, rate=0.2, granularity=granularity)
    assert layerdrop.state_of(compiled) is None


def test_blocks_another_library_hooked_or_compiled_otherwise_are_refused():
    model = make("bert")
    block = layerdrop.find_layers(model).layers[0]
    block.forward = lambda *args, **kwargs: type(block).forward(block, *args, **kwargs)  # e.g. accelerate's hooks
    with pytest.raises(ValueError, match="another library"):
        layerdrop.compile_layers(model, backend="eager")
    compiled = layerdrop.compile_layers(make("bert"), backend="eager")
    with pytest.raises(ValueError, match="build the model again"):
        layerdrop.compile_layers(compiled, backend="aot_eager")
