"""The mechanism: per-layer rates, which layers a depth keeps, where each architecture keeps its
blocks, one keep-mask per forward, the gates that read it, apply/remove/only_layers, regional
compilation, the mask log, learned rates and the data-parallel check."""
