"""`make serve`: a local Prefect server on 127.0.0.1, then the `hdkd/full` deployment served to it.

Ctrl-C stops both. From another terminal: `prefect deployment run hdkd/full --param epochs=3`
with PREFECT_API_URL as printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hdkd.servers import wait_for


def prefect_env(port: int, home: Path) -> dict[str, str]:
    """A self-contained, offline local Prefect: its own home, loopback only, no analytics."""
    return {
        **os.environ,
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }


def main() -> None:
    port = int(os.environ.get("PREFECT_PORT", "4200"))
    env = prefect_env(port, Path(os.environ.get("PREFECT_HOME", ".prefect")))
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start"], env=env)
    try:
        wait_for(f"{env['PREFECT_API_URL']}/health", 120, server)
        print(f"Prefect UI: http://127.0.0.1:{port}  (export PREFECT_API_URL={env['PREFECT_API_URL']})", flush=True)
        subprocess.run([sys.executable, "-m", "flows.serve"], env=env, check=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
