"""Statistics over a run's results: the bootstrap (:mod:`.bootstrap`), the per-concept best-layer
sweep (:mod:`.sweep`) and ``best_layers.csv`` with its uncertainty (:mod:`.bestlayers`)."""
