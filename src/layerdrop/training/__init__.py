"""Training with LayerDrop under Hugging Face ``Trainer``: the callback, the distillation losses,
the trainer subclass and checkpoint housekeeping."""
