"""`svgt --help` documents every step and option with its default; values out of range are usage errors; exit
codes say what kind of failure ended a step (0 ok, 1 failed step, 2 usage, 3 gates failed, 75 transient)."""

from __future__ import annotations

import argparse
import errno

import pytest

from svgt.cli import (
    EXIT_CODES,
    STEPS,
    GatesFailed,
    StepFailed,
    UsageError,
    build_parser,
    exit_code,
    main,
)
from svgt.core.io import disk_full_error
from svgt.core.params import ConfigError
from svgt.core.retry import RetryError
from tests.unit.eval.test_gates import write_metrics


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_step_has_a_description_an_example_and_the_exit_codes():
    steps = subparsers()
    assert list(steps) == list(STEPS)  # `svgt --help` lists them in pipeline order
    for name, parser in steps.items():
        text = parser.format_help()
        assert parser.description and len(parser.description) > 20, name
        assert f"example:\n  svgt {name}" in text and EXIT_CODES in text, name


def test_every_option_has_help_and_shows_its_default():
    for name, parser in {"svgt": build_parser(), **subparsers()}.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and len(action.help) > 5, (name, action.dest)
            help_line = parser._get_formatter()._get_help_string(action)
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert "default" in help_line, (name, action.dest)
    assert "(default: 128)" in subparsers()["generate"].format_help()


def test_version_names_svgt_torch_and_transformers(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    import torch
    import transformers

    assert out.startswith("svgt 0.") and f"torch {torch.__version__}" in out
    assert f"transformers {transformers.__version__}" in out


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--temperature", "-1", "argument --temperature: must be >= 0, got -1"),
    ("--refresh-interval", "0", "argument --refresh-interval: must be >= 1, got 0"),
    ("--top-p", "0", "argument --top-p: must be > 0 and <= 1, got 0"),
    ("--top-p", "1.5", "argument --top-p: must be > 0 and <= 1, got 1.5"),
    ("--max-new-tokens", "0", "argument --max-new-tokens: must be >= 1, got 0"),
    ("--batch-size", "two", "argument --batch-size: expected an integer, got 'two'"),
    ("--threshold", "high", "argument --threshold: must be a number, 'off' or 'module', got 'high'"),
])
def test_values_out_of_range_are_usage_errors(option, value, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompt", "hi", option, value])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_exit_codes_by_kind_of_failure():
    assert exit_code(GatesFailed("x")) == 3
    assert exit_code(UsageError("x")) == 2
    assert exit_code(StepFailed("validation failed")) == 1
    assert exit_code(ConfigError("train.lr: expected a number")) == 1
    assert exit_code(ValueError("bad row")) == 1
    assert exit_code(RetryError("listing s3://b: still failing after 5 attempts")) == 75
    assert exit_code(ConnectionRefusedError(111, "refused")) == 75
    assert exit_code(disk_full_error(__import__("pathlib").Path("/x"), OSError(errno.ENOSPC, "full"))) == 1
    step = StepFailed("registering failed")
    step.__cause__ = ConnectionError("down")
    assert exit_code(step) == 1  # a step that judged its own failure is not "try again"


def test_every_error_class_of_svgt_is_an_svgt_error_with_a_category():
    import importlib
    import pkgutil

    import svgt
    from svgt.core.errors import SvgtError

    classes = set()
    for info in pkgutil.walk_packages(svgt.__path__, "svgt."):
        if info.name == "svgt.__main__":
            continue
        module = importlib.import_module(info.name)
        classes |= {c for c in vars(module).values()
                    if isinstance(c, type) and issubclass(c, Exception) and c.__module__ == info.name}
    assert len(classes) >= 20
    # private control-flow exceptions (stopping a forward pass early) are not errors
    assert sorted(c.__qualname__ for c in classes if not issubclass(c, SvgtError) and c.__name__[0] != "_") == []


def test_exit_code_and_retry_follow_the_error_category():
    from svgt.backbone.sources import BackboneError
    from svgt.core.retry import is_transient
    from svgt.model import ValueModuleError

    assert exit_code(ValueModuleError("weights.safetensors: checksum does not match manifest.json")) == 1
    try:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except OSError:
            raise BackboneError("backbone.source s3://b/m: cannot list") from None  # context kept, cause hidden
    except BackboneError as err:
        assert exit_code(err) == 75 and is_transient(err)
    bad = ValueModuleError("config.json: not valid JSON")
    bad.__cause__ = ConnectionError("down")
    assert exit_code(bad) == 1 and not is_transient(bad)  # a failed verification is not cured by a retry


def test_conflicting_options_exit_2_and_failed_gates_exit_3(tmp_path, capsys):
    assert main(["generate"]) == 2
    assert "give exactly one of --prompt TEXT or --prompts-file FILE.jsonl" in capsys.readouterr().err
    metrics = write_metrics(tmp_path / "metrics", none=(0.30, 0.05), svgt=(0.35, 0.05))
    assert main(["register", "--module", str(tmp_path / "no-module"), "--metrics", str(metrics)]) == 3
    captured = capsys.readouterr()
    assert "FAILED min_harmful_refusal_gain" in captured.out
    assert "gate(s) failed (see above)" in captured.err and not (tmp_path / "mlruns").exists()
    # autoscaling needs the replicas to start with; refused before anything is loaded
    assert main(["serve", "--module", str(tmp_path / "no-module"), "--ray-max-replicas", "4"]) == 2
    assert "--ray-max-replicas needs --ray-replicas" in capsys.readouterr().err


def _ray_error(name: str, **attrs) -> BaseException:
    """An exception class as Ray defines it (its module is Ray's): only the name and module matter to the rule."""
    cls = type(name, (RuntimeError,), {"__module__": "ray.exceptions"})
    err = cls(name)
    for key, value in attrs.items():
        setattr(err, key, value)
    return err


def test_ray_failures_are_transient_but_our_errors_inside_ray_are_not():
    from svgt.core.retry import is_transient
    from svgt.model import ValueModuleError
    from svgt.training.ray_runner import TrainingError

    assert is_transient(_ray_error("ActorDiedError"))  # a lost worker: a rerun gets a new one
    refused = ValueModuleError("ValueModuleConfig: d_v 16 is not divisible by encoder_heads 3")
    run_failed = TrainingError("stage 1 failed in Ray Train run x")
    run_failed.__cause__ = _ray_error("TrainingFailedError", worker_failures={0: refused})
    assert not is_transient(run_failed) and exit_code(run_failed) == 1  # the worker refuses it again
    lost = TrainingError("stage 1 failed in Ray Train run x")
    lost.__cause__ = _ray_error("TrainingFailedError", worker_failures={0: _ray_error("ActorDiedError")})
    assert is_transient(lost) and exit_code(lost) == 75
    assert not is_transient(_ray_error("RayTaskError", cause=ValueError("bad row")))
