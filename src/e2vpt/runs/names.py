"""Every file name e2vpt gives a file in a run folder (and in the folders around runs:
a sweep's, a pruning search's), in one place, so no two modules can disagree on one.
A leaf: imports nothing."""

from __future__ import annotations

# -- a training run, in the order the trainer writes them -------------------------
TRAIN_CONFIG_FILE = "train_config.yaml"  # the TrainConfig (absolute paths), written first
RUN_IDENTITY_FILE = "run_identity.json"  # what the run computes beyond its config (a rewind)
METRICS_JSON_FILE = "metrics.json"  # one row per finished epoch
METRICS_CSV_FILE = "metrics.csv"  # the same rows, for spreadsheets
TRAIN_STATE_FILE = "train_state.pt"  # what resuming needs; deleted once the run is complete
ADAPTER_TENSORS_FILE = "adapter.safetensors"  # the checkpoint's tuned tensors
ADAPTER_CONFIG_FILE = "adapter.json"  # the checkpoint's rebuild recipe (written after them)
RESULTS_FILE = "results.json"  # the run's scores and parameter counts
RUN_COMPLETE_FILE = "run_complete.json"  # the marker: written last, the run is finished
TENSORBOARD_DIR = "tb"  # the training curves' TensorBoard event files (appended as it trains)

# -- files other e2vpt steps keep beside (or in) a run ----------------------------
TRIAL_RECORD_FILE = "trial.json"  # a sweep trial's record, written last
PRUNING_IMPORTANCE_FILE = "importance.json"  # a pruning step's importance scores
PRUNING_POINT_FILE = "pruning_point.json"  # a rewound grid point's record, written last
PRUNING_REPORT_NAME = "pruning_report"  # .md / .csv / .json of `e2vpt prune`
PRUNING_CURVE_FILE = "pruning_curve.png"
EVAL_RESULT_PATTERN = "eval_{data}_{split}.json"  # `e2vpt eval`: one per data set × split

# -- a sweep's folder (OUT/<task>/<method>/) ----------------------------------------
SWEEP_SUMMARY_FILE = "sweep.json"
SWEEP_MARKDOWN_FILE = "sweep.md"

# the files that show a folder holds a run
RUN_FILES = (TRAIN_CONFIG_FILE, RUN_COMPLETE_FILE, ADAPTER_CONFIG_FILE, TRAIN_STATE_FILE)
# a folder holding only these holds no run yet, and is not foreign
SIDE_FILES = (TRIAL_RECORD_FILE, PRUNING_IMPORTANCE_FILE, PRUNING_POINT_FILE)
# a finished checkpoint, as a pruning search copies it (tensors first, recipe last)
CHECKPOINT_FILES = (
    ADAPTER_TENSORS_FILE,
    TRAIN_CONFIG_FILE,
    RESULTS_FILE,
    METRICS_CSV_FILE,
    ADAPTER_CONFIG_FILE,
    RUN_COMPLETE_FILE,
)


def eval_result_file(data_label: str, split: str) -> str:
    """The name ``e2vpt eval`` gives its result: by data set and split, so evaluating
    on other data never replaces a result."""
    return EVAL_RESULT_PATTERN.format(data=data_label, split=split)
