"""The exit-code table every command uses (diffusionlab.errors): 2 and one line for a user
error, 1 and a traceback for a bug, 130 for Ctrl-C, 143 for SIGTERM."""
import os
import signal
import time

import pytest

from diffusionlab.apps import cli
from diffusionlab.apps.cli import main, noise, samplers
from diffusionlab.core.schedules import DiscreteSchedule
from diffusionlab.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USER, UserError


def _raise(exc):
    def f(*args, **kwargs):
        raise exc
    return f


def _noise(tmp_path):
    return ["noise", "--image", "mnist", "--size", "16", "--t", "0,10", "--timesteps", "20",
            "--out", str(tmp_path / "n.png")]


@pytest.mark.parametrize("param,shown", [("timesteps", "--timesteps"), ("spec", "--image"), ("mystery", "mystery")])
def test_a_user_error_is_one_line_naming_the_flag(param, shown, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(DiscreteSchedule, "from_name", _raise(UserError("is not right", param=param)))
    assert main(_noise(tmp_path)) == EXIT_USER
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"diffusionlab noise: error: {shown}: is not right", "hint: see `diffusionlab noise --help`"]


def test_a_user_error_hint_wins(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(DiscreteSchedule, "from_name", _raise(UserError("no", hint="try again")))
    assert main(_noise(tmp_path)) == EXIT_USER
    assert capsys.readouterr().err.strip().splitlines()[-1] == "hint: try again"


def test_an_argparse_error_is_one_line_and_2(capsys):
    assert main(["sample", "--ckpt", "x", "--steps", "many"]) == EXIT_USER
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("diffusionlab sample: error: argument --steps") and err[1].startswith("hint: see ")


def test_a_plain_value_error_from_the_library_is_a_bug(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(DiscreteSchedule, "from_name", _raise(ValueError("an internal inconsistency")))
    assert main(_noise(tmp_path)) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an internal inconsistency" in err and "error:" not in err


def test_ctrl_c_is_130(monkeypatch, capsys):
    monkeypatch.setattr(samplers, "run", _raise(KeyboardInterrupt()))
    assert main(["samplers"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "diffusionlab samplers: interrupted"


def test_sigterm_is_143_and_finally_blocks_run(monkeypatch, capsys):
    cleaned, reached = [], []

    def slow(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises Terminated here
            reached.append(True)  # never: the command stops at the signal
            return 0
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(samplers, "run", slow)
    assert main(["samplers"]) == EXIT_TERMINATED
    assert reached == [] and cleaned == [True]
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before          # the handler is removed afterwards


def test_help_exits_0_through_system_exit():
    with pytest.raises(SystemExit) as e:
        main(["noise", "--help"])
    assert e.value.code == 0
