"""Every classifier that `layerdrop train` and `layerdrop prune` export runs in a standard client
(sentence-transformers for a pooled head, `pipeline("text-classification")` for the native head),
in a fresh process without layerdrop, and predicts what layerdrop's own loader predicts.

(The question-answering export has the same check in test_qa.py.)
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, DataCollatorWithPadding

from layerdrop import cli
from layerdrop.data import TextDataset, encode_classification
from layerdrop.models.loading import load_saved, read_meta

pytest.importorskip("sentence_transformers")

TEXTS = ["a moving and funny film", "dull", "the plot is thin but the actors carry every scene of it with "
         "charm, wit and a great deal of energy, and the ending is earned " * 3, "not good at all"]
MAX_LENGTH = 24  # the long text is cut here, by layerdrop and by the clients alike

# kind -> (model fixture, --pooling): which client runs it follows from the pooling
KINDS = {"bert-mean": ("bert_dir", "mean"), "bert-cls": ("bert_dir", "cls"), "gpt2-last": ("tiny_lm_dir", "last"),
         "bert-native": ("bert_dir", "native"), "gpt2-native": ("tiny_lm_dir", "native")}

CLIENT = textwrap.dedent("""
    import json, sys
    folders, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {}
    for folder, client in folders.items():
        if client == "pipeline":
            from transformers import pipeline
            classify = pipeline("text-classification", model=folder, device="cpu")
            out[folder] = [{r["label"]: r["score"] for r in rows}
                           for rows in classify(texts, top_k=None, truncation=True)]
        else:
            import torch
            from sentence_transformers import SentenceTransformer
            model = SentenceTransformer(folder, device="cpu", local_files_only=True)
            names = json.load(open(f"{folder}/config.json"))["id2label"]
            probs = torch.softmax(model.encode(texts, convert_to_tensor=True), -1)
            out[folder] = [{names[str(i)]: p for i, p in enumerate(row.tolist())} for row in probs]
    print(json.dumps({"predictions": out, "layerdrop": "layerdrop" in sys.modules}))
""")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, minilm_tokenizer):
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "r.jsonl"
    rows = [{"text": f"{'a fine and moving' if i % 2 else 'a dull and tired'} film, number {i}",
             "label": ["neg", "pos"][i % 2]} for i in range(80)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def exports(request, tmp_path_factory, reviews):
    """kind -> {"trained": folder, "pruned": folder}, each trained two steps with LayerDrop."""
    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for kind, (model_fixture, pooling) in KINDS.items():
        out = root / kind
        assert cli.main(["train", "classification", request.getfixturevalue(model_fixture), "--data", reviews,
                         "--out", str(out), "--pooling", pooling, "--max-steps", "2", "--batch-size", "8",
                         "--max-length", str(MAX_LENGTH), "--lr", "1e-2", "--rate", "0.5", "--no-progress",
                         "--no-evaluate"]) == 0
        assert cli.main(["prune", str(out / "model"), "--depth", "2", "--out", str(root / f"{kind}-depth2")]) == 0
        folders[kind] = {"trained": str(out / "model"), "pruned": str(root / f"{kind}-depth2")}
    return folders


@pytest.fixture(scope="module")
def client_predictions(exports):
    """What the standard clients predict for TEXTS, from one fresh process without layerdrop."""
    folders = {folder: "pipeline" if KINDS[kind][1] == "native" else "sentence-transformers"
               for kind, pair in exports.items() for folder in pair.values()}
    result = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(folders), json.dumps(TEXTS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    client = json.loads(result.stdout.strip().splitlines()[-1])
    assert client["layerdrop"] is False
    return client["predictions"]


def _layerdrop_predictions(folder):
    """Class probabilities by label name, as layerdrop loads, encodes and runs the saved model."""
    model, tokenizer = load_saved(folder).eval(), AutoTokenizer.from_pretrained(folder)
    names = read_meta(folder)["label_names"]
    rows, _ = encode_classification(tokenizer, TextDataset("t", TEXTS, None, None), MAX_LENGTH)
    with torch.no_grad():
        logits = model(**DataCollatorWithPadding(tokenizer, return_tensors="pt")(rows)).logits  # (N, C)
    return [dict(zip(names, row.tolist(), strict=True)) for row in torch.softmax(logits, -1)]


@pytest.mark.parametrize("stage", ["trained", "pruned"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_standard_client_predicts_what_layerdrop_predicts(kind, stage, exports, client_predictions):
    folder = exports[kind][stage]
    ours, theirs = _layerdrop_predictions(folder), client_predictions[folder]
    assert [set(p) for p in theirs] == [{"neg", "pos"}] * len(TEXTS)
    for mine, client in zip(ours, theirs, strict=True):
        assert client == pytest.approx(mine, abs=1e-5)
    assert len({round(p["pos"], 4) for p in ours}) > 1  # the texts differ, so the comparison could fail


def test_the_exports_are_the_expected_kinds(exports):
    for kind, (_, pooling) in KINDS.items():
        for folder in exports[kind].values():
            model = load_saved(folder)
            if pooling == "native":
                assert type(model).__name__.endswith("ForSequenceClassification")
                assert model.config.id2label == {0: "neg", 1: "pos"}
            else:
                assert type(model).__name__ == "Classifier" and model.pooling == pooling
                modules = json.loads((Path(folder) / "modules.json").read_text())
                assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense"]
    assert load_saved(exports["bert-mean"]["pruned"]).config.num_hidden_layers == 2
