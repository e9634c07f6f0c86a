"""Recording the masks a run draws: read-only, every training forward once, compact on disk."""

import pytest
import torch

import layerdrop
from conftest import make, tokens
from layerdrop.core.masklog import load_mask_log, record_masks, save_mask_log
from layerdrop.evaluation.report import plot_masks


def _drawn(model, n):
    """The keep-mask of each of ``n`` training forwards, read from the state."""
    out = []
    for i in range(n):
        model(input_ids=tokens(seed=i))
        out.append(model.layerdrop_state.mask.keep)
    return out


def test_recording_does_not_change_the_masks_drawn(arch_name):
    plain = layerdrop.apply(make(arch_name), rate=0.5, seed=5).train()
    watched = layerdrop.apply(make(arch_name), rate=0.5, seed=5).train()
    recorder = record_masks(watched)
    expected, seen = _drawn(plain, 12), _drawn(watched, 12)
    log = recorder.log()
    assert seen == expected
    assert [tuple(row) for row in log.keep.tolist()] == expected
    assert log.draw.tolist() == list(range(12)) and log.layers_run.tolist() == [sum(k) for k in expected]
    assert torch.equal(plain.layerdrop_state.generator.get_state(), watched.layerdrop_state.generator.get_state())


def test_eval_and_fixed_sub_network_forwards_are_not_recorded():
    model = layerdrop.apply(make("bert"), rate=0.5).train()
    recorder = record_masks(model)
    model(input_ids=tokens())
    with layerdrop.only_layers(model, [0, 1]):
        model(input_ids=tokens())
    model.eval()(input_ids=tokens())
    model.train()(input_ids=tokens())
    recorder.remove()
    model(input_ids=tokens())  # after remove(): not recorded
    assert recorder.log().draw.tolist() == [0, 1]


@pytest.mark.parametrize("granularity", ["sublayer", "head"])
def test_finer_granularities_record_which_parts_ran(granularity):
    model = layerdrop.apply(make("bert"), rate=0.5, seed=1, granularity=granularity).train()
    recorder = record_masks(model)
    masks = []
    for i in range(6):
        model(input_ids=tokens(seed=i))
        mask = model.layerdrop_state.mask
        masks.append(mask.sublayers if granularity == "sublayer" else mask.heads)
    log = recorder.log()
    assert log.granularity == granularity and log.parts is not None
    assert [tuple(tuple(layer) for layer in row) for row in log.parts.tolist()] == masks
    assert torch.equal(log.keep, log.parts.any(2))


def test_the_file_round_trips_and_says_how_the_masks_were_drawn(tmp_path):
    model = layerdrop.apply(make("gpt2"), rate=0.5, pattern="every-other").train()
    recorder = record_masks(model)
    _drawn(model, 5)
    log = recorder.log()
    back = load_mask_log(save_mask_log(tmp_path / "masks.safetensors", log))
    assert torch.equal(back.keep, log.keep) and torch.equal(back.draw, log.draw) and torch.equal(back.step, log.step)
    assert (back.granularity, back.pattern, back.parts) == ("layer", "every-other", None)
    assert back.keep.dtype == torch.bool


def test_a_continued_log_replaces_the_forwards_drawn_again():
    model = layerdrop.apply(make("llama"), rate=0.5, seed=2).train()
    recorder = record_masks(model)
    _drawn(model, 2)
    checkpoint = layerdrop.get_rng_state(model)
    _drawn(model, 3)  # forwards 2-4, then the run dies
    first = recorder.log()
    recorder.remove()
    layerdrop.set_rng_state(model, checkpoint)  # resumed from the checkpoint after forward 1
    again = record_masks(model, start=first)
    _drawn(model, 3)  # forwards 2-4 again
    log = again.log()
    assert log.draw.tolist() == [0, 1, 2, 3, 4] and torch.equal(log.keep, first.keep)


def test_a_file_that_is_not_a_mask_log_is_named(tmp_path):
    import safetensors.torch

    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a LayerDrop mask log"):
        load_mask_log(path)


def test_the_mask_figure_is_drawn(tmp_path):
    model = layerdrop.apply(make("bert"), rate=0.5, granularity="head").train()
    recorder = record_masks(model)
    _drawn(model, 8)
    path = plot_masks(recorder.log(), tmp_path / "masks.png", title="bert, head")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_continuing_the_masks_of_another_granularity_is_refused():
    whole = layerdrop.apply(make("bert"), rate=0.5).train()
    recorder = record_masks(whole)
    _drawn(whole, 2)
    heads = layerdrop.apply(make("bert"), rate=0.5, granularity="head").train()
    with pytest.raises(ValueError, match="record into another file"):
        record_masks(heads, start=recorder.log())
