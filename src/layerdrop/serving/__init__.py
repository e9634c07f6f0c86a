"""Running a model at a depth: generation, per-depth latency profiles, the inference worker,
and the HTTP app."""
