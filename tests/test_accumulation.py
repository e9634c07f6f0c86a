"""Gradient accumulation is exact on every training path: k micro-batches of b rows log the same
loss and leave the same gradients as one batch of k·b rows (issue 29, defect 2)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, Trainer, TrainerCallback, TrainingArguments

import layerdrop
from conftest import VOCAB, make, tokens
from layerdrop.models.loading import Classifier
from layerdrop.training.trainer import LayerDropTrainer

ROWS = 8


class _Grads(TrainerCallback):
    """The gradients at the first optimizer step, before the optimizer changes anything."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(  # type: ignore[no-untyped-def]  # HF hook's signature
            self, args, state, control, model=None, **kwargs):
        if not self.grads:
            self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rows(task: str) -> list[dict[str, torch.Tensor]]:
    ids = tokens(batch=ROWS, length=6, seed=3)
    if task == "clm":  # rows padded to 6 tokens: the micro-batches hold different numbers of real tokens
        rows = []
        for i in range(ROWS):
            real = 6 - (i * 3) % 5  # 6, 3, 5, 2, 4, 6, 3, 5 real tokens
            mask = (torch.arange(6) < real).long()
            rows.append({"input_ids": ids[i] * mask, "attention_mask": mask,
                         "labels": ids[i].masked_fill(mask == 0, -100)})
        return rows
    if task == "qa":
        return [{"input_ids": ids[i], "start_positions": torch.tensor(i % 3),
                 "end_positions": torch.tensor(i % 3 + 2)} for i in range(ROWS)]
    return [{"input_ids": ids[i], "labels": torch.tensor(i % 3)} for i in range(ROWS)]


def _qa_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                               num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                                               attention_probs_dropout_prob=0.0, max_position_embeddings=64))


DEPTHS = {2: (0, 1), 1: (0,)}
"""Named depths of a 4-layer model (layerdrop train --depths 4,2,1 with the top strategy)."""

PATHS = {
    # name: (task, model factory, trainer class, trainer options)
    "plain": ("classification", lambda: layerdrop.apply(make("bert"), rate=0.0), LayerDropTrainer, {}),
    "classifier": ("classification",
                   lambda: layerdrop.apply(Classifier(make("bert").bert, num_labels=3, dropout=0.0), rate=0.0),
                   LayerDropTrainer, {}),
    "classifier-hf-trainer": ("classification", lambda: Classifier(make("bert").bert, num_labels=3, dropout=0.0),
                              Trainer, {}),
    "self-distilled": ("classification", lambda: layerdrop.apply(make("bert"), rate=0.0), LayerDropTrainer,
                       {"self_distill": True}),
    "teacher": ("classification", lambda: layerdrop.prune(make("bert"), depth=2), LayerDropTrainer,
                {"teacher": make("bert").eval(), "task_weight": 0.5, "cos_weight": 0.5}),
    "causal-lm": ("clm", lambda: layerdrop.apply(make("gpt2"), rate=0.0), LayerDropTrainer, {}),
    "causal-lm-self-distilled": ("clm", lambda: layerdrop.apply(make("gpt2"), rate=0.0), LayerDropTrainer,
                                 {"self_distill": True}),
    "causal-lm-teacher": ("clm", lambda: layerdrop.prune(make("gpt2"), depth=2), LayerDropTrainer,
                          {"teacher": make("gpt2").eval(), "task_weight": 0.5, "cos_weight": 0.5,
                           "hidden_weight": 0.5, "hidden_layers": ((1, 1),)}),
    "qa": ("qa", lambda: layerdrop.apply(_qa_model(), rate=0.0), LayerDropTrainer, {}),
    "depths": ("classification", lambda: make("bert"), LayerDropTrainer, {"depths": DEPTHS}),
    "depths-teacher": ("classification", lambda: make("bert"), LayerDropTrainer,
                       {"depths": DEPTHS, "teacher": make("bert").eval(), "hidden_weight": 0.5}),
    "causal-lm-depths": ("clm", lambda: make("gpt2"), LayerDropTrainer,
                         {"depths": DEPTHS, "task_weight": 0.5, "distill_weight": 0.5, "distill_temperature": 2.0,
                          "hidden_weight": 0.5}),
    "qa-depths": ("qa", _qa_model, LayerDropTrainer, {"depths": DEPTHS}),
    "depths-sandwich": ("classification", lambda: make("bert"), LayerDropTrainer,
                        {"depths": {3: (0, 1, 2), 2: (0, 1), 1: (0,)}, "each_step": "sandwich", "sandwich": 1}),
}
SMOOTHED = ("plain", "causal-lm", "causal-lm-self-distilled", "causal-lm-teacher", "causal-lm-depths")
"""Paths also run with label smoothing (HF's smoother, shifted for a causal LM)."""


def _step(tmp_path, path: str, batch: int, accumulate: int, smoothing: float = 0.0
          ) -> tuple[float, dict[str, torch.Tensor]]:
    task, build, trainer_class, options = PATHS[path]
    grads = _Grads()
    args = TrainingArguments(output_dir=str(tmp_path / f"{batch}x{accumulate}"), max_steps=1, report_to=[],
                             per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate,
                             save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1,
                             learning_rate=1e-3, max_grad_norm=0.0, remove_unused_columns=False,
                             label_smoothing_factor=smoothing)
    trainer = trainer_class(model=build().train(), args=args, train_dataset=_rows(task), callbacks=[grads],
                            **options)
    trainer.train()
    return trainer.state.log_history[0]["loss"], grads.grads


@pytest.mark.parametrize("path, smoothing", [(p, 0.0) for p in sorted(PATHS)] + [(p, 0.1) for p in SMOOTHED])
def test_accumulated_micro_batches_give_the_loss_and_gradients_of_one_batch(tmp_path, path, smoothing):
    whole_loss, whole = _step(tmp_path, path, batch=ROWS, accumulate=1, smoothing=smoothing)
    split_loss, split = _step(tmp_path, path, batch=ROWS // 2, accumulate=2, smoothing=smoothing)
    assert split_loss == pytest.approx(whole_loss, rel=1e-3)
    assert whole and whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
