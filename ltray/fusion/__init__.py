"""Post-hoc stage: the feature/logit cache, NCM memory, fusion rules, LLW, ASM and decoupling
baselines, all fitted on train + val and reported on test (docs/methods.md#fusion-rules).

The names below are resolved on first use (PEP 562), so that importing the cache format
(:mod:`ltray.fusion.cache`, pyarrow only) does not load torch and every method.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FUSION_METHODS": "ltray.fusion.base",
    "FitContext": "ltray.fusion.base",
    "Fitted": "ltray.fusion.base",
    "Scores": "ltray.fusion.base",
    "parse_settings": "ltray.fusion.base",
    "DISPLAY_ORDER": "ltray.fusion.methods",
    "MethodResult": "ltray.fusion.methods",
    "available_methods": "ltray.fusion.methods",
    "context_of": "ltray.fusion.methods",
    "fit_method": "ltray.fusion.methods",
    "run_method": "ltray.fusion.methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ltray.fusion' has no attribute {name!r}")
    # ltray.fusion.methods imports every method module, so FUSION_METHODS is complete.
    import_module("ltray.fusion.methods")
    return getattr(import_module(_EXPORTS[name]), name)
