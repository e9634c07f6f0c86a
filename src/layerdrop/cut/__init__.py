"""Choosing and cutting layers: prune (a copy) and view (shared weights), the strategy table,
importance metrics, and the precisions a sweep runs at."""
