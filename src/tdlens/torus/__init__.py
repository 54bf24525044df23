"""Torus Goblet & Ghost: batched dynamics, Gymnasium wrapper, renderer (docs/model.md §1)."""
