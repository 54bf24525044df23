"""Torus Goblet & Ghost: batched dynamics, Gymnasium wrapper, renderer (SPEC section 1)."""
