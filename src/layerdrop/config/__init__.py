"""Torch-free settings: LayerDrop's own and each recipe's (the fast ``--help`` path)."""
