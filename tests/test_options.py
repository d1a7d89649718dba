"""Every option is defined once (desra.pipeline.options): the command line and the flows take the same options,
with the same defaults, bounds and help, derived from the models' fields, so that a new field reaches both."""

from __future__ import annotations

import argparse

import pytest
from prefect import flow
from prefect.exceptions import ParameterTypeError, SignatureMismatchError
from prefect.utilities.callables import get_parameter_defaults
from pydantic import Field

import desra.cli as cli
from desra.cli import build_parser, main
from desra.finetuning import finetune_options
from desra.flows.batch import desra_batch
from desra.flows.finetune import finetune
from desra.flows.full import desra
from desra.pipeline.options import FinetuneFields, RunOptions, check_options, option_fields, with_options
from desra.pipeline.settings import Settings
from desra_core import ConfigError
from desra_core.finetune.options import DEFAULTS, TEXTURE_DEFAULT, FinetuneOptions

NO_SR = ("mse_model", "gan_model", "tile", "overlap")  # desra detect: the SR results are given
# What each command takes besides the options (its folders, and the run's batch size).
OWN = {"run": {"input_dir", "out", "batch_size"}, "detect": {"mse", "gan", "out"},
       "finetune": {"images", "out"}, "evaluate": {"images", "out"}}


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _options_by_dest(command: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    found: dict[str, list[argparse.Action]] = {}
    for action in command._actions:
        if action.dest not in ("help", "checked_models", "func"):
            found.setdefault(action.dest, []).append(action)
    return found


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _expected(models, skip=()) -> dict:
    return {name: info for name, info in option_fields(*models).items() if name not in skip}


def _check_command(command: argparse.ArgumentParser, name: str, fields: dict, repeated=()) -> None:
    by_dest = _options_by_dest(command)
    assert set(by_dest) == set(fields) | OWN[name], f"desra {name}: options not from the models"
    for option, info in fields.items():
        default = [info.default] if option in repeated else info.default
        assert command.get_default(option) == default, f"desra {name} {option}"
        flags = {f for action in by_dest[option] for f in action.option_strings}
        if option in cli._SWITCHES:  # the adversarial weight's flag is --adversarial: --gan is the model
            assert set(cli._SWITCHES[option][0]) <= flags, f"desra {name} {option}"
        else:
            assert _flag(option) in flags, f"desra {name} {option}: {sorted(flags)}"
        helps = " ".join(action.help or "" for action in by_dest[option])
        assert info.description.replace("%", "%%") in helps, f"desra {name} {option}"


def _check_flow(fl, fields: dict, own: set[str]) -> None:
    schema = fl.parameters.model_dump()["properties"]
    assert set(schema) == set(fields) | own, fl.name
    defaults = get_parameter_defaults(fl.fn)
    for option, info in fields.items():
        assert defaults[option] == info.default, f"{fl.name} {option}"
        assert schema[option]["default"] == info.default, f"{fl.name} {option}"
        assert schema[option]["description"] == info.description, f"{fl.name} {option}"


def test_the_command_line_and_the_flows_take_the_same_options_with_the_same_defaults():
    commands = _commands(build_parser())
    run_fields, all_fields = _expected([RunOptions]), _expected([RunOptions, FinetuneFields])
    assert len(run_fields) >= 11 and len(all_fields) > len(run_fields)
    _check_command(commands["run"], "run", run_fields)
    _check_command(commands["detect"], "detect", _expected([RunOptions], NO_SR))
    _check_command(commands["finetune"], "finetune", all_fields)
    _check_command(commands["evaluate"], "evaluate", run_fields, repeated=("gan_model",))
    _check_flow(desra, run_fields, {"input_dir", "output_dir", "finetune", "finetune_settings", "batch_size",
                                    "scale_out"})
    _check_flow(desra_batch, run_fields, {"input_dir", "output_dir", "stems", "run_id"})
    _check_flow(finetune, all_fields, {"input_dir", "output_dir", "stems"})
    upscale = _options_by_dest(commands["upscale"])
    for option in ("tile", "overlap", "device"):
        assert commands["upscale"].get_default(option) == RunOptions.model_fields[option].default, option
        assert _flag(option) in upscale[option][0].option_strings


def test_the_defaults_are_written_once_in_the_models():
    # The science's defaults (DetectionConfig) and the fine-tuning dataclass are the sources the models read.
    assert Settings.from_options().options() == RunOptions().model_dump()
    assert FinetuneOptions(**FinetuneFields().model_dump()) == DEFAULTS
    assert cli._DEPLOY_DEFAULTS["DESRA_GAN_MODEL"] == RunOptions().gan_model


def test_the_flows_schema_carries_the_bounds_and_prefect_validates_them():
    schema = desra.parameters.model_dump()["properties"]
    assert (schema["threshold"]["minimum"], schema["threshold"]["maximum"]) == (0.0, 1.0)
    assert schema["tile"]["minimum"] == 16
    holdout = finetune.parameters.model_dump()["properties"]["holdout"]
    assert (holdout["exclusiveMinimum"], holdout["exclusiveMaximum"]) == (0, 1)
    ok = desra.validate_parameters({"input_dir": "a", "output_dir": "b", "threshold": 0.5, "min_area": "12"})
    assert ok["threshold"] == 0.5 and ok["min_area"] == 12
    with pytest.raises(ParameterTypeError, match="threshold"):
        desra.validate_parameters({"input_dir": "a", "output_dir": "b", "threshold": 2})
    with pytest.raises(ParameterTypeError, match="holdout"):
        finetune.validate_parameters({"input_dir": "a", "output_dir": "b", "holdout": 1.0})
    with pytest.raises(SignatureMismatchError):  # a typo is refused, never swallowed by **options
        desra_batch.validate_parameters({"input_dir": "a", "output_dir": "b", "threshhold": 0.5})


def test_a_flow_function_gets_every_option_with_its_default_and_refuses_unknown_names():
    calls = []

    def body(input_dir, output_dir, stems=None, run_id="adhoc", **options):
        calls.append(options)

    wrapped = with_options(RunOptions)(body)
    wrapped("in", "out", threshold=0.5)
    assert calls[0] == {**RunOptions().model_dump(), "threshold": 0.5}
    with pytest.raises(TypeError, match="threshhold"):
        wrapped("in", "out", threshhold=0.5)
    with pytest.raises(TypeError, match="positional"):  # an option is a keyword, never positional
        wrapped("in", "out", None, "adhoc", 0.5)


def test_a_new_field_in_the_model_reaches_the_command_line_and_the_flow(monkeypatch, capsys):
    class Grown(RunOptions):
        sharpen: float = Field(0.25, ge=0.0, description="a new option, written once")

    monkeypatch.setattr(cli, "RunOptions", Grown)
    commands = _commands(build_parser())
    for name in ("run", "detect", "evaluate", "finetune"):
        assert commands[name].get_default("sharpen") == 0.25, name
        assert "--sharpen" in _options_by_dest(commands[name])["sharpen"][0].option_strings, name
    assert main(["run", "in", "--out", "out", "--sharpen", "-1"]) == 2  # refused before anything runs
    assert "expected --sharpen at least 0.0, got -1.0" in capsys.readouterr().err

    @flow(name="grown", validate_parameters=True)
    @with_options(Grown)
    def grown(input_dir: str, **options):
        return options

    properties = grown.parameters.model_dump()["properties"]
    assert properties["sharpen"]["default"] == 0.25 and properties["sharpen"]["minimum"] == 0.0
    assert properties["sharpen"]["description"] == "a new option, written once"
    assert grown.validate_parameters({"input_dir": "a", "sharpen": "0.5"})["sharpen"] == 0.5
    with pytest.raises(ParameterTypeError, match="sharpen"):
        grown.validate_parameters({"input_dir": "a", "sharpen": -1})
    assert grown.fn(input_dir="a")["sharpen"] == 0.25


def test_bad_or_unknown_options_are_one_sentence_naming_the_option():
    with pytest.raises(ConfigError, match=r"^expected threshold at most 1.0, got 3$"):
        Settings.from_options(threshold=3)
    with pytest.raises(ConfigError, match=r"unknown option threshhold"):
        Settings.from_options(threshhold=0.5)
    with pytest.raises(ConfigError, match=r"^expected --tile at least 16, got 8$"):
        check_options(RunOptions, {"tile": 8}, label=_flag)
    with pytest.raises(ConfigError, match=r"^expected overlap to be a valid integer.*got 'x'$"):
        Settings(overlap="x")
    with pytest.raises(ConfigError, match=r"^expected holdout below 1, got 1$"):
        FinetuneOptions(holdout=1)  # the core checks the bounds its fields carry
    with pytest.raises(ConfigError, match=r"^expected iterations at least 1, got 0$"):
        FinetuneOptions(iterations=0)
    assert Settings.from_options(segmenter="").segmenter is None  # a deployment's empty DESRA_SEGMENTER: none


def test_the_command_line_refuses_a_bad_value_naming_its_flag(capsys):
    assert main(["finetune", "--images", "i", "--out", "o", "--no-semantic", "--holdout", "1"]) == 2
    assert "expected --holdout below 1.0, got 1.0" in capsys.readouterr().err
    assert main(["evaluate", "--images", "i", "--out", "o", "--no-semantic", "--gan", "a", "--gan", ""]) == 2
    assert "--gan-model" in capsys.readouterr().err


def test_the_loss_weights_are_auto_unless_given_and_texture_has_its_switch(capsys):
    commands = build_parser()
    base = ["finetune", "--images", "i", "--no-semantic", "--out", "o"]
    args = commands.parse_args(base)
    assert (args.perceptual, args.gan, args.texture) == (None, None, None)  # auto, passed through as None
    assert finetune_options(args) == DEFAULTS
    assert finetune_options(commands.parse_args([*base, "--no-texture"])) == DEFAULTS.replace(texture=0.0)
    assert commands.parse_args([*base, "--texture"]).texture == TEXTURE_DEFAULT
    assert commands.parse_args([*base, "--texture", "0.25"]).texture == 0.25
    assert commands.parse_args([*base, "--no-texture"]).texture == 0.0
    with pytest.raises(SystemExit):
        commands.parse_args([*base, "--help"])
    shown = capsys.readouterr().out
    assert "--texture [WEIGHT]" in shown and "--no-texture" in shown and "(default: auto)" in shown
    assert main([*base, "--texture", "-1"]) == 2
    assert "expected --texture at least 0" in capsys.readouterr().err
    assert check_options(FinetuneFields, {"texture": None, "gan": 0.1})["texture"] is None
    with pytest.raises(ConfigError, match="texture"):
        check_options(FinetuneFields, {"texture": -0.5})
    schema = finetune.parameters.model_dump()["properties"]
    assert schema["texture"]["default"] is None and "auto" in schema["texture"]["description"]
    assert finetune.validate_parameters({"input_dir": "a", "output_dir": "b", "texture": 0.5})["texture"] == 0.5
    with pytest.raises(ParameterTypeError, match="texture"):
        finetune.validate_parameters({"input_dir": "a", "output_dir": "b", "texture": -1})


def test_older_flags_still_work():
    commands = build_parser()
    args = commands.parse_args(["finetune", "--gan", "g", "--mse", "m", "--images", "i", "--labels", "l", "--out", "o",
                                "--validate", "v", "--validate-labels", "vl", "--perceptual", "--adversarial"])
    assert (args.gan_model, args.mse_model, args.labels_dir) == ("g", "m", "l")
    assert (args.validate_dir, args.validate_labels_dir, args.perceptual, args.gan) == ("v", "vl", 1.0, 0.1)
    args = commands.parse_args(["finetune", "--images", "i", "--no-semantic", "--out", "o", "--perceptual", "0.5",
                                "--no-gan"])
    assert (args.segmenter, args.perceptual, args.gan) == (None, 0.5, 0.0)
    args = commands.parse_args(["evaluate", "--images", "i", "--no-semantic", "--out", "o", "--gan", "a", "--gan", "b"])
    assert args.gan_model == ["a", "b"]
    with pytest.raises(SystemExit):  # one semantic choice at most
        commands.parse_args(["run", "in", "--out", "o", "--labels", "l", "--no-semantic"])
