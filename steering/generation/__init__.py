"""Generation engines: the transformers engine (ours, the reference) and the vLLM engine."""
