"""The transformers engine: our own decode loop over a transformers model, with per-row steering plans."""
