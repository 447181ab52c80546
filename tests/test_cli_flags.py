"""The command line's structure: the train flag table against the config dataclasses, every
README command line's flags, the entry points, and the size of the CLI's functions."""
import ast
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from diffusionlab.apps.cli import build_parser, main
from diffusionlab.apps.cli.train import FLAGS, SWITCH, train_config
from diffusionlab.models.processes import PROCESS_FIELDS, DiffusionConfig
from diffusionlab.nn import NETWORKS
from diffusionlab.training.config import PRESETS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "src" / "diffusionlab" / "apps" / "cli"


def _names(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.flag)
def test_every_train_flag_names_a_config_field(flag):
    part, _, name = flag.field.rpartition(".")
    owners = {"": [TrainConfig], "diffusion": [DiffusionConfig], "model": [n.Config for n in NETWORKS.values()]}[part]
    assert any(name in _names(cls) for cls in owners), f"{flag.flag} -> {flag.field}: no such field"


def _train_args(*argv):
    return build_parser().parse_args(["train", *argv])


def _example(flag):
    """A command line that sets ``flag`` legally, and the field value it must give."""
    raw = {"--arch": "dit", "--data": "digits", "--process": "vp"}.get(flag.flag)
    if raw is None:
        raw = (flag.choices[0] if flag.choices else {int: "3", float: "0.25", str: "x"}.get(flag.type, "1,2"))
    argv = [flag.flag] if flag.type == SWITCH else [flag.flag, str(raw)]
    value = True if flag.type == SWITCH else (flag.type(raw) if callable(flag.type) else raw)
    part, _, name = flag.field.rpartition(".")
    procs = PROCESS_FIELDS.get(name, ()) if part == "diffusion" else ()
    if procs and "ddpm" not in procs and flag.flag != "--process":
        argv += ["--process", procs[0]]
    if part == "model" and name not in _names(NETWORKS["unet"].Config):
        argv += ["--arch", "dit"]
    return argv, flag.convert(value) if flag.convert else value


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.flag)
def test_every_train_flag_sets_its_field(flag):
    argv, want = _example(flag)
    cfg = train_config(_train_args(*argv))
    obj = cfg
    for part in flag.field.split("."):
        obj = getattr(obj, part)
    assert obj == want, (argv, obj, want)


def test_no_flag_means_the_default_preset_and_no_train_flag_lives_outside_the_table():
    assert train_config(_train_args()) == PRESETS["default"]()
    assert train_config(_train_args("--preset", "tiny")) == PRESETS["tiny"]()
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in sub._actions} - {"help", "preset", "resume", "strict_resume", "overwrite", "few_step"}
    assert dests == {f.dest for f in FLAGS}


def test_few_step_consistency_makes_a_consistency_training_run():
    cfg = train_config(_train_args("--preset", "tiny", "--few-step", "consistency"))
    assert cfg.distill is not None and cfg.distill.method == "consistency" and cfg.distill.teacher is None
    assert cfg.diffusion.consistency and cfg.sample_sampler == "consistency"


def test_arch_and_process_switches():
    cfg = train_config(_train_args("--arch", "dit", "--hidden", "32", "--process", "edm", "--sigma-max", "40"))
    assert cfg.arch == "dit" and cfg.model.hidden == 32 and cfg.model.patch_size == 4
    assert cfg.diffusion.process == "edm" and cfg.diffusion.sigma_max == 40.0
    lv = train_config(_train_args("--learned-variance", "--data", "some/folder"))
    assert lv.diffusion.loss_kind == "hybrid" and lv.model.channels == 3


def _readme_commands():
    for line in (ROOT / "README.md").read_text().splitlines():
        s = line.strip()
        if s.startswith(("diffusionlab ", ".venv/bin/diffusionlab ")):
            yield [w for w in shlex.split(s, comments=True)[1:] if w != "..."]


@pytest.mark.parametrize("words", list(_readme_commands()), ids=" ".join)
def test_readme_command_lines_parse(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0, capsys.readouterr().err


def test_the_help_of_every_command_lists_every_command():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    doc = sys.modules["diffusionlab.apps.cli"].__doc__
    for name in build_parser()._subparsers._group_actions[0].choices:
        assert name in doc


def test_python_dash_m_diffusionlab_help():
    r = subprocess.run([sys.executable, "-m", "diffusionlab", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "train-classifier" in r.stdout


def test_the_installed_script_help():
    script = Path(sys.executable).parent / "diffusionlab"
    if not script.is_file():
        pytest.skip("no installed diffusionlab script next to this Python")
    r = subprocess.run([str(script), "sample", "--help"], capture_output=True, text=True, timeout=120)
    text = " ".join(r.stdout.split())  # argparse wraps the help
    assert r.returncode == 0 and "--sampler NAME" in text and "else its process's, else ddim" in text


def test_no_cli_function_is_longer_than_40_lines():
    long = []
    for f in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 40:
                long.append(f"{f.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
