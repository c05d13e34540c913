"""ltray: long-tailed image recognition with a class-mean memory, post-hoc fusion and
knowledge transfer, searched at scale with Ray Tune + Optuna and tracked in MLflow."""

__version__ = "0.1.0"
