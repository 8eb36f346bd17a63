"""The run configuration's rules (vi_simsiam/config.py: FIELD_RULES, vi_simsiam/constraints.py): every
field has one, every rule refuses what it should with a message naming the option, the value and what
is allowed, and the CLI turns any of them into one line on stderr with exit status 2."""

from __future__ import annotations

import dataclasses
import math

import pytest

from vi_simsiam import cli, config
from vi_simsiam.data import ConfigError

FIELDS = [f.name for f in dataclasses.fields(config.Config)]


def test_every_field_has_a_rule():
    assert set(config.FIELD_RULES) == set(FIELDS)


@pytest.mark.parametrize("preset", sorted(config.PRESETS))
def test_every_preset_satisfies_the_rules(preset):
    config.resolve(preset)


def _cases():
    for name in FIELDS:
        for value in config.FIELD_RULES[name].refused_examples():
            if name == "preset":
                continue  # the preset is resolve()'s first argument; tested below
            yield pytest.param(name, value, id=f"{name}={value!r}")


@pytest.mark.parametrize("name, value", list(_cases()))
def test_an_out_of_range_value_of_every_field_is_refused(name, value):
    with pytest.raises(ConfigError) as error:
        cfg = dataclasses.replace(config.resolve("digits"), **{name: value})
        config.validate(cfg)
    message = str(error.value)
    assert message.startswith(config.option_name(name) + " "), message
    assert repr(value) in message and "must be" in message, message


def test_an_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="unknown preset 'mnist'"):
        config.resolve("mnist")


@pytest.mark.parametrize(
    "option, value, allowed",
    [("--dim", "1", "an integer >= 2"), ("--lr", "nan", "a finite number > 0"), ("--lr", "0", "> 0"),
     ("--kl-weight", "-1", ">= 0"), ("--momentum", "1", "< 1"), ("--workers", "-2", ">= 0"),
     ("--threads", "0", ">= 1"), ("--knn-temperature", "inf", "finite"), ("--eval-batch-size", "0", ">= 1"),
     ("--backbone", "vgg", "one of"), ("--in-channels", "2", "one of 1, 3"), ("--image-size", "4", ">= 8")],
)
def test_the_cli_reports_a_bad_value_in_one_line(option, value, allowed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", option, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vi-simsiam: error: {option} "), err
    assert allowed in err, err
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_a_resumed_run_checks_its_overrides(tmp_path):
    saved = config.resolve("digits")
    with pytest.raises(ConfigError, match="--workers -1: must be an integer >= 0"):
        config.merge_for_resume(saved, {"workers": -1})


def test_real_rules_refuse_non_finite_values():
    rule = config.FIELD_RULES["kl_weight"]
    assert rule.allows(0.0) and rule.allows(3) and not rule.allows(math.nan) and not rule.allows(math.inf)
