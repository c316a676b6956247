"""Run folders: what e2vpt writes into one, in what order, and how it reads and judges
one.

* :mod:`~e2vpt.runs.names` — every file name (``TRAIN_CONFIG_FILE``,
  ``ADAPTER_CONFIG_FILE``, ``METRICS_JSON_FILE`` …);
* :mod:`~e2vpt.runs.folder` — the transaction rules: what a folder holds
  (:func:`inspect_folder`), the marker written last, :func:`clear`,
  :func:`fresh_folder`, :func:`require_complete`;
* :mod:`~e2vpt.runs.schema` — what the files may hold: the one validator every reader
  goes through (size, UTF-8 and nesting bounds; ``adapter.json`` typed field by field);
* :mod:`~e2vpt.runs.records` — reading a folder's config, checkpoint recipe, results
  and records;
* :mod:`~e2vpt.runs.integrity` — the tensor file against the hash and shapes
  ``adapter.json`` records; :func:`~e2vpt.runs.integrity.verify_run` (``e2vpt verify``);
* :mod:`~e2vpt.runs.matching` — the one answer to "does this folder's run match these
  settings" (absolute paths, resolved method options, runtime fields ignored).

Light: no torch, no model code at import (the command line reads run folders first)."""

from e2vpt.runs.folder import (
    EXISTING_MODES,
    RunFolder,
    absolute,
    clear,
    fresh_folder,
    inspect_folder,
    mark_complete,
    readable_name,
    require_complete,
)
from e2vpt.runs.matching import (
    Differences,
    resumed_settings,
    run_differences,
    setting_differences,
)
from e2vpt.runs.names import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_TENSORS_FILE,
    CHECKPOINT_FILES,
    EVAL_RESULT_PATTERN,
    METRICS_CSV_FILE,
    METRICS_JSON_FILE,
    PRUNING_CURVE_FILE,
    PRUNING_IMPORTANCE_FILE,
    PRUNING_POINT_FILE,
    PRUNING_REPORT_NAME,
    RESULTS_FILE,
    RUN_COMPLETE_FILE,
    RUN_FILES,
    RUN_IDENTITY_FILE,
    SIDE_FILES,
    SWEEP_MARKDOWN_FILE,
    SWEEP_SUMMARY_FILE,
    TENSORBOARD_DIR,
    TRAIN_CONFIG_FILE,
    TRAIN_STATE_FILE,
    TRIAL_RECORD_FILE,
    eval_result_file,
)
from e2vpt.runs.records import (
    has_train_config,
    holds_checkpoint,
    read_adapter_config,
    read_record,
    read_results,
    read_train_config,
)

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_TENSORS_FILE",
    "CHECKPOINT_FILES",
    "EVAL_RESULT_PATTERN",
    "EXISTING_MODES",
    "METRICS_CSV_FILE",
    "METRICS_JSON_FILE",
    "PRUNING_CURVE_FILE",
    "PRUNING_IMPORTANCE_FILE",
    "PRUNING_POINT_FILE",
    "PRUNING_REPORT_NAME",
    "RESULTS_FILE",
    "RUN_COMPLETE_FILE",
    "TENSORBOARD_DIR",
    "RUN_FILES",
    "RUN_IDENTITY_FILE",
    "SIDE_FILES",
    "SWEEP_MARKDOWN_FILE",
    "SWEEP_SUMMARY_FILE",
    "TRAIN_CONFIG_FILE",
    "TRAIN_STATE_FILE",
    "TRIAL_RECORD_FILE",
    "Differences",
    "RunFolder",
    "absolute",
    "clear",
    "eval_result_file",
    "fresh_folder",
    "has_train_config",
    "holds_checkpoint",
    "inspect_folder",
    "mark_complete",
    "read_adapter_config",
    "read_record",
    "read_results",
    "read_train_config",
    "readable_name",
    "require_complete",
    "resumed_settings",
    "run_differences",
    "setting_differences",
]
