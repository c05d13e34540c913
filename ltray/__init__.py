"""ltray: long-tailed image recognition with a class-mean memory, post-hoc fusion and
knowledge transfer, searched at scale with Ray Tune + Optuna and tracked in MLflow."""

from ltray._version import __version__

__all__ = ["__version__", "load_run", "LoadedRun"]


def __getattr__(name: str) -> object:
    # Lazy: `import ltray` (and so `ltray --help`) must not import torch.
    if name == "load_run":
        from ltray.tracking.models import load_run  # a run directory or an MLflow runs:/ URI

        return load_run
    if name == "LoadedRun":
        from ltray.inference import LoadedRun

        return LoadedRun
    raise AttributeError(f"module 'ltray' has no attribute {name!r}")
