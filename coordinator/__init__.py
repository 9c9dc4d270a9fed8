"""The coordinator: parameter server, chunk assignment, checkpoints (python -m coordinator)."""
