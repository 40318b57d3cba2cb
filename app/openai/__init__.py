"""The OpenAI-compatible layer: wire models (`protocol`), engine results to those models (`serving`), routes."""
