"""Sweeps: the experiment machinery built on the library layers (`python -m mmln.sweep`).

Modules, each importing only those above it: `plan` (the grid of points, pure), `rungs` (the
halving rung rule, pure), `point` (the one point runner: train / continue / evaluate a point under
its lock), `grid` (grid search), `study` (the Optuna study and pruners), `proxy` (the cheap score),
`halving` (successive halving), `summary` (best lrs, the parent's summary, comparison files),
`slurm` (array scripts), `cli` (the command). `mmln/sweep.py` and `mmln/halving.py` keep the old
import paths."""
