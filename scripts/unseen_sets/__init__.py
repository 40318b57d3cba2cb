"""The unseen tasks of each held-out set, by set: `set_N.TASKS` maps a task's name to what yields its (input, output)
pairs. `scripts/make_unseen_tasks.py` writes them (its docstring: the scratch venv and the packages' pins)."""
