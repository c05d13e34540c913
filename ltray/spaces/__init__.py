"""Search spaces shipped with ltray (``ltray tune --space NAME``; ``ltray tune --list``).

Each space is a YAML file next to this module (format: :mod:`ltray.tune.space`). They install
with the package, so ``ltray tune --space kt`` (or ``kt.yaml``) works from any folder; the
repository's top-level ``search_spaces/`` is a link to this folder.
"""
