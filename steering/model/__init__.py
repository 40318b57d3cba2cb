"""Loading a causal LM (packaged, tiny, folder, hub id), its architecture map, the model lock and its twin."""
