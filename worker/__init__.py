"""A training worker: computes gradients for the chunks the coordinator assigns (python -m worker)."""
