"""Checks that a teacher and its student (or the data) agree: the task, the labels, the tokenizer.

Shared by ``layerdrop distill`` (a cut or given student) and ``layerdrop train --depths --teacher`` (every
depth of one run learning from a fine-tuned model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from layerdrop.errors import InputError
from layerdrop.evaluation.qa import is_qa_model
from layerdrop.models.loading import Classifier, is_classifier, read_meta

__all__ = ["check_labels", "check_shapes", "check_tokenizers", "label_names", "num_labels", "task_of"]


def task_of(model: nn.Module, role: str = "teacher") -> str:
    """The task a trained model does, from its class: ``classification``, ``qa``, ``clm`` or ``mlm``."""
    name = type(model).__name__
    if is_classifier(model):
        return "classification"
    if is_qa_model(model):
        return "qa"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "clm"
    if name.endswith("ForMaskedLM"):
        return "mlm"
    raise InputError(f"the {role} is a {name}, which does no task: distil {'from' if role == 'teacher' else 'into'} a "
                     "model trained for one (a classifier or QA model saved by `layerdrop train`, or a language model)")


def label_names(model: nn.Module, folder: str) -> list[str] | None:
    """A classifier's class names as its folder records them, else ``None``."""
    names = read_meta(folder).get("label_names")
    if names:
        return list(names)
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(model, Classifier) and id2label:
        names = [id2label[i] for i in sorted(id2label)]
        if names != [f"LABEL_{i}" for i in range(len(names))]:  # transformers' placeholders name nothing
            return names
    return None


def num_labels(model: nn.Module) -> int | None:  # None only for a config without labels, as HF types it
    return model.head.out_features if isinstance(model, Classifier) else cast(PreTrainedModel, model).config.num_labels


def check_labels(teacher: nn.Module, teacher_dir: str, data_names: Sequence[str] | None,
                  student: nn.Module | None = None, student_dir: str | None = None) -> None:
    """The teacher, the data and a given student must name the same classes, in the same order."""
    names = label_names(teacher, teacher_dir)
    if data_names is not None and names is not None and list(names) != list(data_names):
        raise InputError(f"the teacher's labels {names} are not the data's {list(data_names)}: distil on the "
                         "data the teacher was trained for")
    if data_names is not None and num_labels(teacher) != len(data_names):
        raise InputError(f"the teacher predicts {num_labels(teacher)} classes, the data has {len(data_names)}: "
                         "distil on the data the teacher was trained for")
    if student is not None and student_dir is not None:
        if num_labels(student) != num_labels(teacher):
            raise InputError(f"the student predicts {num_labels(student)} classes, the teacher "
                             f"{num_labels(teacher)}: they need the same label set")
        theirs = label_names(student, student_dir)
        if names is not None and theirs is not None and theirs != names:
            raise InputError(f"the student's labels {theirs} are not the teacher's {names}: give a student trained "
                             "on the same labels, or cut one from the teacher with --depth")


def check_tokenizers(teacher: Any, student: Any, student_dir: str) -> None:
    """A student learns the teacher's predictions token for token: it needs the teacher's vocabulary."""
    if teacher.get_vocab() != student.get_vocab():
        raise InputError(f"{student_dir} has another tokenizer than the teacher ({len(student)} and {len(teacher)} "
                         "tokens): a student learns the teacher's predictions token for token, so it needs the "
                         "same tokenizer")


def check_shapes(teacher: nn.Module, student: nn.Module, task: str, *, hidden: bool) -> None:
    """A student must predict over the teacher's vocabulary and, to match hidden states (``hidden``), be as wide."""
    if hidden:
        widths = [getattr(m.config, "hidden_size", None) for m in (teacher, student)]
        if widths[0] != widths[1]:
            raise InputError(f"the hidden-state losses compare hidden states, but the teacher is {widths[0]} wide and "
                             f"the student {widths[1]}: drop them, or give a student of the teacher's width")
    if task in ("clm", "mlm"):
        sizes = [cast(PreTrainedModel, m).get_output_embeddings().weight.shape[0] for m in (teacher, student)]
        if sizes[0] != sizes[1]:
            raise InputError(f"the teacher predicts over {sizes[0]} tokens, the student over {sizes[1]}: soft targets "
                             "need the same output vocabulary")
