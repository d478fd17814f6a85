"""kiln.tune's search space and `kiln tune --param`, checked without Ray: what a search
cannot take is a K0960 naming the entry; kiln.tune, kiln and the CLI load neither Ray nor
Optuna until a search runs, and say how to install them when they are missing (K0961)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import kiln
import kiln.tune
from kiln.cli import parse_param_option
from kiln.tune import LogUniform, RandInt, Uniform, check_space, loguniform, randint, uniform

ARGS = ["hidden", "act"]  # the model's arguments the space may vary


@pytest.mark.parametrize("space, search, words", [
    ({"lr": loguniform(1e-4, 1e-1)}, "grid", "grid search takes lists of values, but lr = "
     "loguniform(0.0001, 0.1)"),
    ({"width": [4, 8]}, "grid", "sets 'width', which is neither a training option nor an "
     "argument of the model"),
    ({"batch": [0, 32]}, "grid", "batch = 0 in the search space: it must be an int >= 1"),
    ({"batch": [16.5]}, "random", "batch = 16.5 in the search space: it must be an int >= 1"),
    ({"lr": uniform(0, 1)}, "random", "lr = 0 in the search space: it must be a number "
     "above 0"),
    ({"weight_decay": [-1e-4]}, "grid", "weight_decay = -0.0001 in the search space"),
    ({"lr": []}, "random", "lr has no values to try"),
    ({}, "grid", "the search space is empty"),
])
def test_a_bad_space_is_refused(space, search, words):
    with pytest.raises(kiln.KilnError) as info:
        check_space(space, search, ARGS)
    assert info.value.code == "K0960" and words in info.value.message


def test_a_space_becomes_lists_and_ranges():
    space = check_space({"lr": loguniform(1e-4, 1e-1), "batch": 32, "act": ("relu", "gelu")},
                        "optuna", ARGS)
    assert space.entries == {"lr": LogUniform(1e-4, 1e-1), "batch": [32],
                             "act": ["relu", "gelu"]}
    # every listed value and both ends of every range, each in one configuration checked
    # before the search
    assert space.corners() == [{"lr": 1e-4, "batch": 32, "act": "relu"},
                               {"lr": 1e-1, "batch": 32, "act": "relu"},
                               {"lr": 1e-4, "batch": 32, "act": "gelu"}]


@pytest.mark.parametrize("make, lo, hi, words", [
    (loguniform, 0, 1, "a log-uniform range must be above 0"),
    (uniform, 1, 0, "the ends must be finite numbers, lo <= hi"),
    (uniform, 0, float("inf"), "the ends must be finite numbers"),
    (randint, 1, 2.5, "the ends of randint are ints"),
])
def test_a_bad_range_is_refused(make, lo, hi, words):
    with pytest.raises(kiln.KilnError, match=words) as info:
        make(lo, hi)
    assert info.value.code == "K0960"


def test_param_option_reads_values_and_ranges():
    assert parse_param_option(["lr=1e-3,1e-2", "hidden=64", "act=relu,gelu",
                               "weight_decay=loguniform:1e-5:1e-2", "momentum=uniform:0:0.9",
                               "batch=randint:16:64"]) == {
        "lr": [1e-3, 1e-2], "hidden": [64], "act": ["relu", "gelu"],
        "weight_decay": LogUniform(1e-5, 1e-2), "momentum": Uniform(0, 0.9),
        "batch": RandInt(16, 64)}


@pytest.mark.parametrize("items, words", [
    (["lr"], "must look like NAME=V1,V2,..."),
    (["lr="], "must look like NAME=V1,V2,..."),
    (["lr=1e-3", "lr=1e-2"], "each NAME once"),
    (["lr=loguniform:1e-4"], "a range is loguniform:LO:HI"),
    (["lr=loguniform:0:1"], "a log-uniform range must be above 0"),
])
def test_param_option_refuses_what_it_cannot_read(items, words):
    with pytest.raises(kiln.KilnError, match=words) as info:
        parse_param_option(items)
    assert info.value.code == "K0960"


def test_kiln_tune_and_the_cli_import_neither_ray_nor_optuna():
    code = ("import sys, kiln, kiln.cli\n"
            "kiln.tune.loguniform(1e-4, 1e-1)  # kiln.tune loads on first use\n"
            "from kiln.cli import parse_param_option\n"
            "parse_param_option(['lr=loguniform:1e-4:1e-1'])\n"
            "try:\n    kiln.cli.main(['tune', '--help'])\nexcept SystemExit:\n    pass\n"
            "loaded = [m for m in ('ray', 'optuna') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("missing", ["ray", "optuna"])
def test_without_ray_tune_or_optuna_a_search_says_how_to_install_them(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(kiln.KilnError) as info:
        kiln.tune.run("examples/mlp.kiln", data="iris", space={"hidden": [16]})
    assert info.value.code == "K0961" and f"{missing} is not installed" in info.value.message
    assert "pip install 'kiln[tune]'" in info.value.hint
