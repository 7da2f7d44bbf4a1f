"""Sweeps: a grid of DAE trainings, each trial an ordinary run directory (being built: issue 22)."""
