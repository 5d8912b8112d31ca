"""Deterministic small checkpoints for tests (written with fixed seeds)."""
