"""The embedded demo (`python -m mmln.demo`, `mmln/demo/__main__.py`): the whole pipeline on a tiny
model and synthetic data, on a CPU. `pretrain` makes the stand-ins for the pretrained models,
`stages` trains and evaluates stage 1 and stage 2, `tables` prints the results, `compare` runs
`--compare`, and `lrsweep` records the halving sweep that chose its learning rates."""
