"""``diffusionlab serve``: the live page (``apps.serve``) on the checkpoints under ``--runs``."""
from __future__ import annotations

from ...errors import UserError
from . import options

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    p = sub.add_parser("serve", help="a live, offline page that samples the checkpoints under --runs")
    p.add_argument("--runs", default="runs", help="folder whose run folders (with checkpoints/) the page lists")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (another than loopback needs --token)")
    p.add_argument("--port", type=int, default=7860, help="port (0: a free one; the readiness line names it)")
    p.add_argument("--token", default=None, help="secret every route then requires (?token=, X-Token or Bearer)")
    p.add_argument("--queue", type=int, default=16, help="generations that may wait (a full queue answers 503)")
    p.add_argument("--workers", type=int, default=1, help="generations run at once")
    p.set_defaults(run=run, param_flags=options.param_flags(p))


def run(a) -> int:
    import socket

    if a.host not in LOOPBACK and not a.token:
        raise UserError(f"binding {a.host} lets other machines run your models: give --token SECRET too "
                        "(or keep the default --host 127.0.0.1)", param="host")
    if a.queue < 1 or a.workers < 1:
        raise UserError("--queue and --workers are at least 1", param="queue")
    if not 0 <= a.port <= 65535:
        raise UserError(f"{a.port} is not a port", param="port")
    try:
        import uvicorn

        from ..serve.api import create_app
    except ImportError as e:
        raise UserError(f"the page needs packages that are not installed ({e.name}): "
                        "pip install 'diffusionlab[app]'") from None
    app = create_app(a.runs, token=a.token, depth=a.queue, workers=a.workers, runs_label=a.runs, host=a.host)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((a.host, a.port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {a.host}:{a.port}: {e.strerror}", param="port") from None
    sock.listen(128)
    port = sock.getsockname()[1]
    shown = f"[{a.host}]" if ":" in a.host else a.host
    n = len(app.state.catalog.list())
    print(f"diffusionlab serve: ready at http://{shown}:{port}/{'?token=' + a.token if a.token else ''} "
          f"({n} checkpoint{'s' if n != 1 else ''} under {a.runs})", flush=True)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    server.run(sockets=[sock])
    return server.exit_code()


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, remembering which signal stopped it (exit 130 / 143)."""

        signal_received = None

        def handle_exit(self, sig, frame):
            self.signal_received = sig
            super().handle_exit(sig, frame)

        def exit_code(self) -> int:
            import signal

            from ...errors import Terminated

            if self.signal_received == signal.SIGINT:
                raise KeyboardInterrupt
            if self.signal_received == signal.SIGTERM:
                raise Terminated()
            return 0

    return Server


def _Server(config):
    return _server_class()(config)
