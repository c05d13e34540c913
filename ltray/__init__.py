"""ltray: long-tailed image recognition with a class-mean memory, post-hoc fusion and
knowledge transfer, searched at scale with Ray Tune + Optuna and tracked in MLflow."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_run", "LoadedRun"]


def __getattr__(name: str) -> object:
    # Lazy: `import ltray` (and so `ltray --help`) must not import torch.
    if name in ("load_run", "LoadedRun"):
        from ltray import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'ltray' has no attribute {name!r}")
