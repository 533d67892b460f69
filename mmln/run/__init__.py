"""What the commands share to start a run: `build` (the one way to build a model from a config and
a checkpoint: fit, evaluate, predict, analyze, export) and `resume` (whether and from where a run
continues)."""
