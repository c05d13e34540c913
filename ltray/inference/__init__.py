"""A finished run as a model: load it, score it on other data, label new images, log it to
MLflow (:func:`load_run`, :mod:`~ltray.inference.evaluate`, :mod:`~ltray.inference.predict`,
:func:`~ltray.inference.model.log_model`)."""

from ltray.inference.load import InputSpec, LoadedRun, load_run
from ltray.inference.model import HeadModel

__all__ = ["InputSpec", "LoadedRun", "load_run", "HeadModel"]
