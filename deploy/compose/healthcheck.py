"""Container healthcheck of the autolabel worker: its Prometheus endpoint answers.

Installed in the image as /usr/local/bin/autolabel-healthcheck (see Dockerfile). The port
comes from the project's settings (AUTOLABEL_METRICS_PORT), never from a second default.
Exit 0 = healthy, 1 = unhealthy. With metrics off (port 0) there is nothing to probe, so
the check passes and only the process state counts.
"""

from __future__ import annotations

import sys
import urllib.request


def main() -> int:
    try:
        from services.settings import load_settings

        port = load_settings().metrics_port
    except Exception as exc:  # noqa: BLE001 - any failure to read settings is unhealthy
        print(f"unhealthy: settings: {exc}", file=sys.stderr)
        return 1
    if port == 0:
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: metrics endpoint :{port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
