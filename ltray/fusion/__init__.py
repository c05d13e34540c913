"""Post-hoc stage: the feature/logit cache, NCM memory, fusion rules, LLW, ASM and decoupling
baselines, all fitted on train + val and reported on test (docs/methods.md#fusion-rules)."""

from ltray.fusion.base import FUSION_METHODS, FitContext, Fitted, Scores, parse_settings
from ltray.fusion.methods import (
    DISPLAY_ORDER,
    MethodResult,
    available_methods,
    context_of,
    fit_method,
    run_method,
)

__all__ = [
    "FUSION_METHODS",
    "DISPLAY_ORDER",
    "FitContext",
    "Fitted",
    "Scores",
    "MethodResult",
    "available_methods",
    "context_of",
    "fit_method",
    "parse_settings",
    "run_method",
]
