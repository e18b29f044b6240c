"""`make serve`: a Prefect server on 127.0.0.1, then the `hdkd/full` deployment served to it.

Ctrl-C stops both. From another terminal: `prefect deployment run hdkd/full --param epochs=3`
with PREFECT_API_URL as printed.

For a team: PREFECT_SERVER_API_AUTH_STRING=user:password makes the server refuse every API client that
does not send it (clients set PREFECT_API_AUTH_STRING to the same string); PREFECT_SERVER_API_HOST binds
another address than 127.0.0.1, with a warning when no auth string is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hdkd.servers import LOOPBACK, client_host, stop_on_sigterm, wait_for, warn_exposed


def prefect_env(port: int, home: Path, host: str = LOOPBACK, auth_string: str | None = None) -> dict[str, str]:
    """A self-contained, offline Prefect: its own home, `host` (loopback by default), no analytics; with
    `auth_string`, a server that asks for it and clients (the served deployments, workers) that send it."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://{client_host(host)}:{port}/api",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    if auth_string:
        env |= {"PREFECT_SERVER_API_AUTH_STRING": auth_string, "PREFECT_API_AUTH_STRING": auth_string}
    return env


def main() -> None:
    port = int(os.environ.get("PREFECT_PORT", "4200"))
    host = os.environ.get("PREFECT_SERVER_API_HOST", LOOPBACK)
    auth_string = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    env = prefect_env(port, Path(os.environ.get("PREFECT_HOME", ".prefect")), host, auth_string)
    if not auth_string:
        warn_exposed(host, "prefect")
    stop_on_sigterm()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start"], env=env)
    try:
        wait_for(f"{env['PREFECT_API_URL']}/health", 120, server)
        api = env["PREFECT_API_URL"]
        asks = " (clients: export PREFECT_API_AUTH_STRING, the same user:password)" if auth_string else ""
        print(f"Prefect UI: http://{client_host(host)}:{port}  (export PREFECT_API_URL={api}){asks}", flush=True)
        subprocess.run([sys.executable, "-m", "flows.serve"], env=env, check=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
