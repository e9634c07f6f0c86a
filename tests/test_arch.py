import pytest
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

import layerdrop
from conftest import NUM_LAYERS, Custom, make


def test_every_table_architecture_is_found(arch_name):
    site = layerdrop.find_layers(make(arch_name))
    assert len(site.layers) == NUM_LAYERS
    assert site.arch is not None and arch_name in site.arch.model_types


def test_every_table_row_is_covered_by_a_tiny_model():
    from conftest import TINY

    covered = set(TINY)
    for arch in layerdrop.ARCHITECTURES:
        assert set(arch.model_types) <= covered, arch


def test_custom_model_is_found_by_path():
    site = layerdrop.find_layers(Custom(), "encoder.blocks")
    assert site.path == "encoder.blocks" and len(site.layers) == NUM_LAYERS


def test_unknown_architecture_error_says_how_to_pass_a_path():
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, decoder_start_token_id=0))
    with pytest.raises(ValueError, match=r"layers='encoder\.blocks'") as err:
        layerdrop.find_layers(model)
    assert "encoder.block" in str(err.value)  # the candidates are listed


def test_path_that_is_not_a_module_list_is_rejected():
    with pytest.raises(ValueError, match="not an nn.ModuleList"):
        layerdrop.find_layers(Custom(), "head")


def test_missing_path_is_rejected_with_candidates():
    with pytest.raises(ValueError, match="encoder.blocks"):
        layerdrop.find_layers(Custom(), "decoder.blocks")


def test_model_without_layers_is_rejected():
    model = Custom()
    model.encoder.blocks = nn.ModuleList()
    with pytest.raises(ValueError, match="no layers"):
        layerdrop.find_layers(model, "encoder.blocks")
