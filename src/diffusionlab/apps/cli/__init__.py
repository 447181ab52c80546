"""Command line: ``diffusionlab train | sample | eval | noise | samplers | demo | img2img |
inpaint | upscale | train-classifier | train-autoencoder | finetune | lora | dpo | make-pairs | distill | export | serve``, one module per command (``register(sub)`` adds its
parser and sets ``run``); shared option groups in ``options``.

Exit codes (``diffusionlab.errors``, README "Exit codes"), the same for every command:
0 success; 2 a user error (``UserError``, a damaged or missing checkpoint, a diverged training,
a bad flag): one line ``diffusionlab <command>: error: <message>`` naming the flag, and a hint;
130 Ctrl-C; 143 SIGTERM (raised as ``Terminated`` so ``finally`` blocks and atomic writes clean
up); 1 anything else, a bug, with its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import traceback

from ...errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USER, Terminated, UserError
from . import (autoencoder, classifier, demo, distill, dpo, export, finetune, lora, noise, pipelines, sample, samplers,
               serve, train)
from . import eval as eval_cmd
from .common import Loaded, guided, load, write_npy

WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}
COMMANDS = (train, sample, eval_cmd, noise, samplers, demo, pipelines, classifier, autoencoder, finetune, lora,
            dpo, distill, export, serve)  # in `--help` order

__all__ = ["main", "entry", "build_parser", "write_npy", "Loaded", "load", "guided", "EXIT_OK"]


class Parser(argparse.ArgumentParser):
    """argparse with the commands' error format: one line and a hint, exit status 2."""

    def error(self, message):
        self.exit(EXIT_USER, f"{self.prog}: error: {message}\nhint: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffusionlab", description="Train, sample and measure diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def _user_errors() -> tuple:
    """The exception types that are the user's to fix (exit 2), with their default hints."""
    from ...models.checkpoint import CheckpointError
    from ...training.trainer import TrainingDiverged

    return ((CheckpointError, "point --ckpt at a run directory written by `diffusionlab train`"),
            (TrainingDiverged, "resume from the last checkpoint with a lower --lr or --precision fp32"),
            (UserError, None))  # after its subclasses: the first match gives the hint


def report(command: str, e: BaseException, flags: dict, hint: str | None) -> None:
    """The one-line error of a command, naming the flag that fed the failing parameter."""
    param = getattr(e, "param", None)
    message = f"{flags.get(param, param)}: {e.message}" if param else str(getattr(e, "message", e))
    print(f"diffusionlab {command}: error: {message}", file=sys.stderr)
    hint = getattr(e, "hint", None) or hint or f"see `diffusionlab {command} --help`"
    print(f"hint: {hint}", file=sys.stderr)


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises ``Terminated`` in the main thread while the command runs."""
    def handler(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv=None) -> int:
    """Run one command; returns its exit status (``--help`` exits through SystemExit(0))."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        return EXIT_USER
    return run(args)


def entry() -> None:
    """The ``diffusionlab`` console command and ``python -m diffusionlab``: ``main()``, then exit
    with its status (``core.distributed.exit_process``: a rank of a multi-process run skips the
    interpreter's teardown). ``main()`` itself always returns, for callers in Python."""
    from ...core import distributed

    distributed.exit_process(main())


def run(args) -> int:
    """``args.run(args)`` with the exit-code table applied (``launched``: one process of a
    multi-process run)."""
    errors = _user_errors()
    try:
        with launched(), sigterm_raises():
            return args.run(args)
    except tuple(t for t, _ in errors) as e:
        report(args.command, e, args.param_flags, next(h for t, h in errors if isinstance(e, t)))
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"diffusionlab {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"diffusionlab {args.command}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            traceback.print_exc()
            return EXIT_BUG
        # the machine's to fix, not a bug: one line naming the file (a full disk, a read-only mount)
        print(f"diffusionlab {args.command}: error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        print("hint: free disk space or fix the folder's permissions, then run the command again (--resume for "
              "a training run)", file=sys.stderr)
        return EXIT_USER
    except Exception:  # a bug: the traceback is the report
        traceback.print_exc()
        return EXIT_BUG


@contextlib.contextmanager
def launched():
    """Under a launcher (torchrun, accelerate) only rank 0 prints to stdout (every rank's errors
    still reach stderr), and the process group is taken down at the end."""
    from ...core import distributed

    quiet = distributed.launched_world().rank > 0
    stdout = sys.stdout
    if quiet:
        sys.stdout = open(os.devnull, "w")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            distributed.destroy()
        if quiet:
            sys.stdout.close()
            sys.stdout = stdout


def _classifier_free(a, den):
    """The guided denoiser of the class / prompt / CFG flags in ``a`` (kept for bench scripts;
    ``guided`` also returns the condition)."""
    return guided(a, den)[0]
