"""The training-method registry: layers import downward only, and lookups see every method."""

import subprocess
import sys

import pytest

from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.train.catalog import TRAIN_METHODS, get_method
from ltray.train.methods import MethodDefaults, TrainMethod


def test_methods_module_does_not_import_previous_works():
    code = (
        "import sys, ltray.train.methods\n"
        "bad = sorted(m for m in sys.modules if m.startswith('ltray.previous'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_catalog_resolves_every_method():
    assert {"ce", "kt", "oltr", "lfme_expert", "lfme"} <= set(TRAIN_METHODS.names())
    for name in ("ce", "kt", "oltr", "lfme_expert", "lfme"):
        method = get_method(load_config(overrides=[f"train.method={name}"]))
        assert isinstance(method, MethodDefaults), name


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="oltr"):
        get_method(load_config(overrides=["train.method=nope"]))


def test_hook_defaults():
    cfg = load_config(overrides=["data.sampler=sqrt"])
    method: TrainMethod = get_method(cfg)
    data = object()
    assert method.prepare_data(data, cfg) is data  # type: ignore[arg-type]
    assert method.sampler(cfg) == "sqrt"
    net = get_method(cfg).build(cfg, num_classes=3, in_channels=1, small_input=True, data=None)
    (group,) = method.param_groups(net, cfg)
    assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters() if p.requires_grad]
    oltr = get_method(load_config(overrides=["train.method=oltr"]))
    assert oltr.sampler(cfg) == "class_balanced"
