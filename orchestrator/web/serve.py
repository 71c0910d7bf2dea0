"""`shardctl ui`: bind, print the URL with its token (as Jupyter does), serve until interrupted.

The socket is bound here, before the server starts, so `--port 0` (any free port) prints the port really bound
and a port in use is one line of error, not a traceback. uvicorn runs with its access log off (a first request's
URL carries the token), without a Server header, and on plain HTTP: on a host other than loopback the token
crosses the network unencrypted, which the command says (an SSH tunnel to 127.0.0.1 is the safe way to share it).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from orchestrator.web.auth import Auth
from orchestrator.web.source import JobSource


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); OSError naming the address when it cannot be had."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int, token: str | None = None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(source: JobSource, host: str, port: int, token: str, say: Callable[[str], None],
          warn: Callable[[str], None]) -> None:
    """Serve the dashboard of `source` until interrupted (Ctrl-C): the URL through `say` (stdout), a warning
    through `warn` (stderr)."""
    import uvicorn

    from orchestrator.web.app import make_app

    sock = bind(host, port)
    bound = sock.getsockname()[1]
    app = make_app(source, Auth(token, cookie_name=f"shardctl_ui_{bound}"))
    config = uvicorn.Config(app, access_log=False, log_level="warning", server_header=False, lifespan="off",
                            proxy_headers=False)
    if not is_loopback(host):
        warn(f"warning: {host} is reachable from other machines and this is plain HTTP: the token crosses the "
            "network unencrypted; to share the dashboard, prefer an SSH tunnel to 127.0.0.1")
    say(f"shardctl ui: {source.where}, at {url_of(host, bound)} (Ctrl-C stops it)")
    say(f"    open {url_of(host, bound, token)}")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises the signal again for its caller
        pass
    finally:
        sock.close()


__all__ = ["bind", "is_loopback", "serve", "url_of"]
