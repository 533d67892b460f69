"""python -m mmln.report --experiment NAME[,NAME...] | --config CFG [key=value ...] [--out DIR] [--tables ...]

Paper-style tables and figures from the MLflow runs of one or more experiments (read with
`mmln.tracking.Tracker.runs`), written to `--out` (default `outputs/<experiment>/report/`):

    report.md              every table, in the paper's shapes (a table without data says so in one line)
    <table>.csv            the same numbers, unrounded
    lr_curves_<model>.png  the selection metric over the learning rate, one line per strategy
    fig3_similarity_<model>.png  finetune and LayerNorm layer-similarity heatmaps, one colour scale
    fig4_ln_grads_<model>.png    the same norm's gradient histograms over steps, finetune | LayerNorm
    data_types_<model>.png Table 3 as bars (the paper's Fig. 2)
    analysis/<model>-<strategy>/...  the `analysis/` PNGs (layer-similarity heatmaps, LayerNorm
                           gradient plots) that each strategy's best run logged, when there are any

and logged as artifacts (under `report/`, or `report/<DIR name>` for another `--out`) of a run named `report` (tag `kind=report`) in the first
experiment. Only FINISHED stage-2 runs count (tag `stage=instruct`; sweep parents and report
runs carry a `kind` tag and are left out). A run is described by its tags `model`, `strategy`,
`lr`, `data_subset`, `variant` (set by `mmln.sweep --variant`) and its params
`model.vision.backend` / `model.vision.name` and `train.seed`; when several runs share all of them,
one counts by an explicit rule: a run of the reference config (`--config CFG [key=value ...]`, as
`make report` and the `experiments/` targets pass it: the run's params equal the config's on every
key but the per-point ones) first, then a full evaluation (no `eval_limit` tag), then the newest.
Every table names the run of each row in its last column (`run`). "Best" = `mmln.eval.selection.best_lr`,
the rule `mmln.sweep` uses: the highest mean `--select-metric` over a learning rate's seeds (default
Flickr30k CIDEr, as the paper selects; a tie goes to the higher learning rate); a group none of
whose runs has that metric shows its newest run, marked `*`. With several seeds (`mmln.sweep
--seeds N`) a cell of Tables 1, 3, 4, 5 and A1 is the mean over the seeds and, in report.md,
`mean ± half-width of its 95% Student-t CI` (the CSVs hold the means); the LR curves draw the same
intervals as error bars.

- Table 1: strategies x benchmarks at each strategy's best learning rate (reference runs: no variant),
  then per model the untuned model (its `mmln.evaluate --ckpt none` run, tag `ckpt=none`) and chance.
- Table 2: trainable parameters (% of the whole MLLM) and peak memory per strategy.
- Table 3: data types: one row per `data_subset` (runs with the reference vision encoder).
- Table 4: connector ablation: layernorm / connector / layernorm_no_connector.
- Table 5: vision encoder: one row per backend / timm name (runs with the reference data).
- Table 6: layer similarity (`analysis/layer_similarity`) per strategy.
- Table A1: the selection metric per learning rate per strategy.
- Paired tests (`paired`): for each pair of Table 1's strategies at their chosen learning rates,
  the difference of every Table-1 column with the 95% interval of a paired bootstrap over the same
  benchmark items (questions for POPE / VQAv2, images for MME and the captions), read back from the
  evaluations' answer files (`mmln.eval.items`, `mmln.eval.selection.paired_bootstrap`); `*` marks a
  difference whose interval excludes 0. With several seeds an item's terms are averaged over
  the seeds of the chosen lr first (the interval covers item sampling, not training noise).
  `paired.csv` holds one line per (pair, column).

Every result says what it is (`mmln.report.scale`): report.md, each table and each figure's caption
give the scale of their runs (optimizer steps, samples seen, `eval.limit`) and, below the
`--smoke-*` thresholds, "smoke scale: not evidence"; Fig. 3 / Fig. 4 captions say where their data
contradict the paper.
"""
from __future__ import annotations

from mmln.report.cli import main, open_ui
from mmln.report.figures import (PAPER_PAIR, analysis_figures, data_type_bars, lr_curves, metric_label,
                                 paper_figures)
from mmln.report.paired import Diff, evaluation_items, paired_tables, seed_items
from mmln.report.rows import (ABLATION, STRATEGY_ORDER, Run, Stat, best, data_label, group, load_runs, mismatch,
                              pruned_points, reference, reference_params, seed_stat, strategy_key, vision_label)
from mmln.report.tables import (BENCH_COLS, BUILDERS, Table, has_data, table1, table2, table3, table4, table5, table6,
                                tableA1)
from mmln.report.write import ROW_RULE, TABLES, fmt, log_report, markdown, report, write_csv

__all__ = ["ABLATION", "BENCH_COLS", "BUILDERS", "Diff", "PAPER_PAIR", "ROW_RULE", "Run", "STRATEGY_ORDER", "Stat",
           "TABLES", "Table", "analysis_figures", "best", "data_label", "data_type_bars", "evaluation_items", "fmt",
           "group", "has_data", "load_runs", "log_report", "lr_curves", "main", "markdown", "metric_label",
           "mismatch", "open_ui", "paired_tables", "paper_figures", "pruned_points", "reference", "reference_params",
           "report", "seed_items", "seed_stat", "strategy_key", "table1", "table2", "table3", "table4", "table5",
           "table6", "tableA1", "vision_label", "write_csv"]
