"""Analyses of a run (the paper's Table 6, Fig. 3 and 4; docs/paper.md): LayerNorm gradient statistics and cross-layer similarity.

Pure torch / numpy / matplotlib (no Lightning, no MLflow): `gradients`, `similarity`, `figures`.
The Lightning callbacks are in `mmln.callbacks.analysis`, the CLI in `mmln.analyze`.

Metric names (stable; `<param>` is the parameter's path inside the LLM decoder, e.g.
`layers.10.input_layernorm.weight`, with characters outside [A-Za-z0-9_/. -] replaced by `_`):

    analysis/ln_grad_var/<param>        variance across the gradient vector's entries (ddof=0), per recorded step
    analysis/ln_grad_mean/<param>       mean of its entries, per recorded step
    analysis/ln_grad_norm/<param>       its L2 norm, per recorded step
    analysis/ln_grad_var_mean/<param>   mean over recorded steps of ln_grad_var (at train end)
    analysis/layer_similarity           off-diagonal mean of the per-token L x L cosine matrix
    analysis/layer_similarity_meanpool  ... of mean-pooled hidden states
    analysis/layer_similarity_image     ... image positions only
    analysis/layer_similarity_text      ... text positions only
    analysis/layer_similarity_no_bos    ... without the first (BOS) position

Steps of the ln_grad_* metrics are 0-based optimizer steps (the step the gradient is about to be
applied in); layer-similarity metrics are logged at the final optimizer step.

Files, in `<run_dir>/analysis/` and as MLflow artifacts under `analysis/`:

    ln_grads.npz              `step` (S,) int64 + one (S, numel) float32 array per parameter
    ln_grad_variance.png      variance over steps
    ln_grad_histograms.png    ridgeline of the gradient entries' histograms over steps
    layer_similarity.npz      one (L, L) float32 matrix per variant (token, meanpool, image, text,
                              no_bos) + num_samples
    layer_similarity.png      heatmap of the `token` matrix
"""
from mmln.analysis.gradients import GradientRecord, grad_stats, load_grads, metric_key, resolve_params, variances
from mmln.analysis.similarity import (
    VARIANTS,
    SimilarityAccumulator,
    block_outputs,
    layer_similarity,
    load_similarity,
    off_diagonal_mean,
    pick_indices,
    sample_batches,
    save_similarity,
    scalars,
)

GRADS_FILE = "ln_grads.npz"
SIMILARITY_FILE = "layer_similarity.npz"


def similarity_metric(variant: str) -> str:
    """`token` -> analysis/layer_similarity, other variants -> analysis/layer_similarity_<variant>."""
    return "analysis/layer_similarity" + ("" if variant == "token" else f"_{variant}")


__all__ = [
    "GRADS_FILE", "SIMILARITY_FILE", "VARIANTS", "GradientRecord", "SimilarityAccumulator", "block_outputs",
    "grad_stats", "layer_similarity", "load_grads", "load_similarity", "metric_key", "off_diagonal_mean",
    "pick_indices", "resolve_params", "sample_batches", "save_similarity", "scalars", "similarity_metric",
    "variances",
]
