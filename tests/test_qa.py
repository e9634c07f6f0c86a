"""Extractive question answering: SQuAD-format files, windows, span decoding, EM/F1, and `layerdrop train qa`."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import CITIES, ZH, squad_question, write_squad
from layerdrop import cli
from layerdrop.data import DataError, encode_qa, load_qa, read_squad
from layerdrop.evaluation.qa import best_answer, exact_match, f1, normalize_answer, qa_scores
from layerdrop.models.loading import load_saved, read_meta


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory):
    return write_squad(tmp_path_factory.mktemp("qa") / "squad.json")


def _write(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


def test_reader_reads_answers_unanswerable_questions_and_chinese(squad_file):
    rows = read_squad(squad_file)
    assert len(rows) == 2 * len(CITIES) + len(ZH)
    i = rows.ids.index("zh0")
    assert rows.answers[i] == (("北京", 0),) and rows.questions[i] == "中国的首都是哪里？"
    assert rows.answers[rows.ids.index("en3-none")] == ()
    assert rows.with_null


def test_splits_keep_every_question_on_a_context_together(squad_file):
    splits = load_qa(squad_file, seed=0, valid_fraction=0.2, test_fraction=0.2)
    contexts = [set(s.texts) for s in (splits.train, splits.valid, splits.test)]
    assert all(len(s) for s in contexts)
    assert not (contexts[0] & contexts[1] or contexts[0] & contexts[2] or contexts[1] & contexts[2])
    assert sum(map(len, (splits.train, splits.valid, splits.test))) == len(read_squad(squad_file))


def test_a_missing_key_is_named_with_the_question_id(tmp_path):
    paragraph = {"context": "Paris is in France.", "qas": [{"id": "q7", "answers": []}]}
    with pytest.raises(DataError, match=r"question 'q7': missing key 'question'"):
        read_squad(_write(tmp_path, {"data": [{"paragraphs": [paragraph]}]}))
    with pytest.raises(DataError, match=r"top level: missing key 'data'"):
        read_squad(_write(tmp_path, [{"context": "x"}]))
    with pytest.raises(DataError, match=r"data\[0\].paragraphs\[0\].qas\[0\]: missing key 'id'"):
        read_squad(_write(tmp_path, {"data": [{"paragraphs": [{"context": "x", "qas": [{"question": "y"}]}]}]}))


def test_an_answer_start_that_misses_its_text_is_an_error(tmp_path):
    qa = {"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 3}]}
    with pytest.raises(DataError, match=r"question 'q1': answer_start 3 does not match the answer text: "
                                        r"expected 'Paris', found 'is is'"):
        read_squad(_write(tmp_path, {"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [qa]}]}]}))


# --------------------------------------------------------------------------- scoring


def test_english_answers_are_normalised_as_squad_does():
    assert normalize_answer("The  Eiffel-Tower, an icon!") == "eiffeltower icon"
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower", "tower"]) == 0.0
    assert f1("Eiffel", ["Eiffel Tower"]) == pytest.approx(2 / 3)  # p 1, r 1/2
    assert f1("in Paris France", ["Paris", "France"]) == pytest.approx(0.5)  # best gold: p 1/3, r 1
    assert f1("Lyon", ["Paris"]) == 0.0


def test_chinese_answers_are_scored_by_characters_as_cmrc_does():
    assert exact_match("北京。", ["北京"]) == 1.0
    assert f1("北京大学", ["北京"]) == pytest.approx(2 / 3)  # common run 2: p 2/4, r 1
    assert f1("京北", ["北京"]) == pytest.approx(0.5)  # the longest common run is one character: p 1/2, r 1/2
    assert f1("在 北京 的", ["北京"]) == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))


def test_an_unanswerable_question_is_right_only_with_an_empty_answer():
    assert exact_match("", []) == f1("", []) == 1.0
    assert exact_match("Paris", []) == f1("Paris", []) == 0.0
    assert f1("", ["Paris"]) == 0.0


# --------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


def test_windows_put_start_and_end_on_the_answer_tokens(squad_file, tokenizer):
    rows = read_squad(squad_file)
    enc = encode_qa(tokenizer, rows, max_length=64, stride=16)
    for w, row in enumerate(enc.rows):
        example, s, e = enc.example_of[w], row["start_positions"], row["end_positions"]
        gold = rows.answers[example]
        if s == 0:
            assert e == 0
            continue
        text, start = gold[0]
        offsets = enc.offsets[w]
        assert rows.texts[example][offsets[s][0]:offsets[e][1]] == text
        if text.isascii():  # MiniLM's vocabulary lacks most CJK characters
            assert tokenizer.decode(row["input_ids"][s:e + 1]) == text.lower()
    long_windows = [w for w, x in enumerate(enc.example_of) if rows.ids[x] == "en0"]
    assert len(long_windows) > 1  # the long context became several windows
    assert enc.rows[long_windows[0]]["start_positions"] == 0  # the answer is not in the first one
    assert enc.rows[long_windows[-1]]["start_positions"] > 0
    assert enc.outside == ()


def test_an_answer_inside_no_window_is_counted_and_not_trained_on(tmp_path, tokenizer):
    context = " ".join(f"word{i}" for i in range(80))
    answer = " ".join(f"word{i}" for i in range(10, 70))  # longer than a window's context
    paragraphs = [{"context": context, "qas": [squad_question("long", "Which words?", context, answer),
                                               squad_question("short", "Which word?", context, "word3")]}]
    rows = read_squad(_write(tmp_path, {"data": [{"paragraphs": paragraphs}]}))
    with pytest.warns(UserWarning, match=r"1 of 2 questions have an answer inside no window.*'long'"):
        enc = encode_qa(tokenizer, rows, max_length=48, stride=8)
    assert enc.outside == (0,)
    assert len(enc.trainable()) == sum(1 for x in enc.example_of if x == 1) < len(enc.rows)


def test_a_question_too_long_for_a_window_is_named(tokenizer):
    from layerdrop.data import QADataset

    rows = QADataset("x", ["q9"], ["why " * 60], ["a b c d e f g " * 20], [()])
    with pytest.raises(DataError, match=r"question 'q9' is 60 tokens long, too long for windows of 64 tokens"):
        encode_qa(tokenizer, rows, max_length=64, stride=16)


# --------------------------------------------------------------------------- decoding


def _window(start_peaks, end_peaks, n=8, null=0.0):
    start, end = torch.zeros(n), torch.zeros(n)
    start[0] = end[0] = null
    for i, v in start_peaks.items():
        start[i] = v
    for i, v in end_peaks.items():
        end[i] = v
    return start, end


CONTEXT = "alpha beta gamma delta epsilon"
#                                  CLS   q     SEP   alpha   beta     gamma     delta      SEP
OFFSETS_1 = [None, None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]
OFFSETS_2 = [None, None, None, (11, 16), (17, 22), (23, 30), None, None]  # the second window: gamma delta epsilon


def test_the_best_span_is_decoded_from_one_window():
    start, end = _window({4: 5.0}, {5: 5.0})
    assert best_answer(CONTEXT, [(start, end, OFFSETS_1)]) == "beta gamma"
    start, end = _window({5: 5.0, 1: 9.0}, {4: 3.0, 5: 2.0})  # a question token; an end before the start
    assert best_answer(CONTEXT, [(start, end, OFFSETS_1)]) == "gamma"
    assert best_answer(CONTEXT, [(*_window({3: 5.0}, {6: 5.0}), OFFSETS_1)], max_answer_length=2) != \
        "alpha beta gamma delta"


def test_the_best_span_is_found_across_windows():
    first = (*_window({3: 2.0}, {3: 2.0}), OFFSETS_1)
    second = (*_window({4: 4.0}, {5: 4.0}), OFFSETS_2)
    assert best_answer(CONTEXT, [first, second]) == "delta epsilon"


def test_the_null_answer_wins_only_by_more_than_the_threshold():
    window = (*_window({4: 3.0}, {4: 3.0}, null=4.0), OFFSETS_1)  # null 8 > span 6
    assert best_answer(CONTEXT, [window], with_null=True) == ""
    assert best_answer(CONTEXT, [window], with_null=True, null_threshold=2.5) == "beta"
    assert best_answer(CONTEXT, [window], with_null=False) == "beta"  # SQuAD 1.1 always answers


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(squad_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = cli.main(["train", "qa", "bert-tiny", "--data", str(squad_file), "--out", str(out), "--max-steps", "3",
                     "--batch-size", "8", "--max-length", "64", "--stride", "16", "--rate", "0.5",
                     "--self-distill", "--vocab-size", "400", "--lr", "1e-3", "--no-progress", "--save-steps", "50",
                     "--seed", "0"])
    assert code == 0
    return out


def test_train_qa_reports_exact_match_and_f1_and_exports_a_qa_model(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) == {"valid_exact_match", "valid_f1", "test_exact_match", "test_f1"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert read_meta(trained / "model")["task"] == "qa"
    assert type(load_saved(str(trained / "model"))).__name__ == "BertForQuestionAnswering"


def test_a_qa_model_prunes_to_a_loadable_qa_model_and_sweeps_with_f1(trained, squad_file, tmp_path):
    assert cli.main(["prune", str(trained / "model"), "--depth", "3", "--out", str(tmp_path / "d3"),
                     "--data", str(squad_file)]) == 0
    pruning = read_meta(tmp_path / "d3")["pruning"]
    assert pruning["kept_layers"] == [0, 3, 5] and 0.0 <= pruning["validation_f1"] <= 1.0
    small = load_saved(str(tmp_path / "d3"))
    assert type(small).__name__ == "BertForQuestionAnswering" and small.config.num_hidden_layers == 3
    assert cli.main(["sweep", str(trained / "model"), "--data", str(squad_file), "--out", str(tmp_path / "sweep"),
                     "--max-length", "64", "--latency-reps", "1", "--no-progress"]) == 0
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["metric"] == "f1"
    assert [p["depth"] for p in sweep["points"]["every-other"]] == [6, 5, 4, 3, 2, 1]


QUESTIONS = [("What is the capital of Japan?", "Tokyo is the capital of Japan. It is known for its old squares."),
             ("日本的首都是哪里？", "东京是日本的首都，也是一座历史悠久的城市。")]

CLIENT = textwrap.dedent("""
    import json, sys
    import torch, transformers
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    folder, questions = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    answers = []
    for question, context in questions:  # the standard decoding: best start + end inside the context
        enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets, seq = enc.pop("offset_mapping")[0], enc.sequence_ids(0)
        with torch.no_grad():
            out = model(**enc)
        best = max((out.start_logits[0, s] + out.end_logits[0, e], s, e) for s in range(len(seq))
                   for e in range(s, min(s + 30, len(seq))) if seq[s] == 1 and seq[e] == 1)
        answers.append(context[offsets[best[1]][0]:offsets[best[2]][1]])
    piped = None
    try:
        qa = transformers.pipeline("question-answering", model=model, tokenizer=tok)
    except KeyError:  # transformers 5 removed this pipeline
        pass
    else:
        piped = [qa(question=q, context=c, max_answer_len=30)["answer"] for q, c in questions]
    print(json.dumps({"answers": answers, "pipeline": piped, "layerdrop": "layerdrop" in sys.modules}))
""")


def test_the_export_answers_the_same_in_plain_transformers(trained):
    folder = trained / "model"
    result = subprocess.run([sys.executable, "-c", CLIENT, str(folder), json.dumps(QUESTIONS)],
                            capture_output=True, text=True, check=True)
    client = json.loads(result.stdout.strip().splitlines()[-1])
    assert client["layerdrop"] is False
    model = load_saved(str(folder)).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    from layerdrop.data import QADataset

    rows = QADataset("q", ["0", "1"], [q for q, _ in QUESTIONS], [c for _, c in QUESTIONS], [(), ()])
    enc = encode_qa(tok, rows, 128, 32)
    ours = []
    with torch.no_grad():
        for w, row in enumerate(enc.rows):
            batch = {k: torch.tensor([v]) for k, v in row.items() if not k.endswith("_positions")}
            out = model(**batch)
            ours.append(best_answer(QUESTIONS[w][1], [(out.start_logits[0], out.end_logits[0], enc.offsets[w])]))
    assert client["answers"] == ours
    if client["pipeline"] is not None:
        assert client["pipeline"] == ours
    from transformers import DataCollatorWithPadding

    assert set(qa_scores(model, enc, rows, DataCollatorWithPadding(tok, return_tensors="pt"))) == {"exact_match", "f1"}


def test_a_qa_model_is_distilled_on_start_and_end_logits(trained, squad_file, tmp_path):
    assert cli.main(["distill", str(trained / "model"), "--data", str(squad_file), "--depth", "1", "--max-steps", "2",
                     "--batch-size", "8", "--max-length", "64", "--stride", "16", "--no-progress",
                     "--out", str(tmp_path / "d")]) == 0
    meta = json.loads((tmp_path / "d" / "model" / "layerdrop.json").read_text())
    assert meta["task"] == "qa" and len(meta["kept_layers"]) == 1
    assert set(meta["metrics"]) == set(meta["teacher_metrics"]) == {"valid_exact_match", "valid_f1",
                                                                     "test_exact_match", "test_f1"}


def test_self_distillation_of_a_qa_model_matches_start_and_end_logits():
    from transformers.modeling_outputs import QuestionAnsweringModelOutput

    from layerdrop.training.losses import kd_loss, output_kd_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = (QuestionAnsweringModelOutput(start_logits=torch.randn(2, 7, generator=g),
                                                     end_logits=torch.randn(2, 7, generator=g)) for _ in range(2))
    expected = (kd_loss(student.start_logits, teacher.start_logits, 2.0)
                + kd_loss(student.end_logits, teacher.end_logits, 2.0)) / 2
    assert torch.allclose(output_kd_loss(student, teacher, 2.0), expected)
    same_end = QuestionAnsweringModelOutput(start_logits=teacher.start_logits, end_logits=student.end_logits)
    assert float(output_kd_loss(same_end, teacher)) > 0  # the end logits count too


def test_the_scoring_doctest_holds():
    import doctest

    import layerdrop.evaluation.qa

    result = doctest.testmod(layerdrop.evaluation.qa)
    assert result.attempted > 0 and result.failed == 0
