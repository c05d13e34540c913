"""ltray's one way to MLflow: every MLflow call of every command is made in this package.

- :mod:`~ltray.tracking.client` — the store (:func:`resolve_tracking_uri`: an absolute
  ``sqlite:///$LTRAY_HOME/mlflow.db`` by default) and :class:`SpoolingClient`, through which
  every call goes: with the server down calls are spooled to a JSON-lines file and replayed in
  order later (runs created meanwhile get ``pending-…`` ids, resolved after the replay); new
  experiments are marked as model-training experiments (tag ``mlflow.experimentKind`` =
  ``custom_model_development``).
- :mod:`~ltray.tracking.names` — the metric naming scheme ``{split}_{head}_{group}[_{stat}]``
  (``val_kt_few``, ``test_fused_llw_overall``, ``test_ce_overall_mean``); every such value is a
  fraction in [0, 1].
- :mod:`~ltray.tracking.context` — the source tags of a run (command, ltray version, git
  commit, user) and its dataset input (name ``cifar10-lt ρ=100 seed 0``, digest of the split's
  list files, source = the data root).
- :mod:`~ltray.tracking.runs` — what every command logs: :func:`start_run`,
  :func:`log_dataset`, :func:`log_epochs`, :func:`log_results`, :func:`log_run_model`,
  :func:`link_run_dir`; `ltray train` (:func:`log_train_run`) and `ltray fuse`
  (:func:`log_fusion`) whole.
- :mod:`~ltray.tracking.models` — a run's network in MLflow's PyTorch flavour
  (:func:`log_model`), the registry, and :func:`load_run` of a folder or a ``runs:/`` URI.

`ltray tune` (:mod:`ltray.tune.mlflow_callback`, the sweep's parent run in
:mod:`ltray.tune.sweep`) and `ltray reproduce` (:mod:`ltray.reproduce.tracking`) decide *when*
to log and call these; no other module imports mlflow (``tests/unit/test_tracking.py`` checks).
Importing this package does not import mlflow.
"""

from ltray.tracking.client import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    SpoolingClient,
    artifact_location,
    mlflow_params,
    resolve_tracking_uri,
)
from ltray.tracking.context import dataset_input, dataset_of_run, git_commit, run_tags
from ltray.tracking.models import (
    LoggedModel,
    load_run,
    log_model,
    register_model,
    resolve_run,
    run_tags_of,
)
from ltray.tracking.names import (
    chosen_metrics,
    fraction_problems,
    fused_head,
    head_metrics,
    metric_name,
    parse_metric,
    result_metrics,
)
from ltray.tracking.runs import (
    MODEL_NAME,
    RUN_ARTIFACTS,
    RUN_LINK,
    fusion_metrics,
    link_run_dir,
    log_dataset,
    log_epochs,
    log_fusion,
    log_results,
    log_run_model,
    log_train_run,
    read_run_link,
    runs_table_url,
    start_run,
)

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MODEL_NAME",
    "RUN_ARTIFACTS",
    "RUN_LINK",
    "LoggedModel",
    "load_run",
    "log_model",
    "resolve_run",
    "SpoolingClient",
    "artifact_location",
    "chosen_metrics",
    "dataset_input",
    "dataset_of_run",
    "fraction_problems",
    "fused_head",
    "fusion_metrics",
    "git_commit",
    "head_metrics",
    "link_run_dir",
    "log_dataset",
    "log_epochs",
    "log_fusion",
    "log_results",
    "log_run_model",
    "log_train_run",
    "metric_name",
    "mlflow_params",
    "parse_metric",
    "read_run_link",
    "register_model",
    "resolve_tracking_uri",
    "result_metrics",
    "run_tags",
    "run_tags_of",
    "runs_table_url",
    "start_run",
]
