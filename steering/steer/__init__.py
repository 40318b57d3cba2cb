"""Steering a forward pass: per-row plans built once per batch and the hooks that apply them."""
