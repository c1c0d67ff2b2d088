"""``python -m server`` / ``rastau-server``: serve the verification API until SIGINT/SIGTERM, then finish the
requests in flight (up to ``server.app.SHUTDOWN_TIMEOUT_S``) and close the database and face workers.

With ``RASTAU_SERVER_PROCESSES=N`` (N > 1) the server runs as N processes on one port (``SO_REUSEPORT``: the kernel
spreads the connections), each with its own database pool and its own ``RASTAU_FACE_WORKERS``; one Python process
is about one core's worth of request handling. This process is the first of them and stops the others when it stops.
"""
from __future__ import annotations

import multiprocessing

from core.config import Settings
from core.logs import configure_logging, get_logger
from server.app import SHUTDOWN_TIMEOUT_S, serve

log = get_logger("rastau.server")


def main() -> int:
    settings = Settings().require_secrets(signing=True)  # production without secrets exits here, naming each one
    configure_logging(settings.log_level, settings.log_format)
    log.info("server starting", host=settings.server_host, port=settings.server_port, mode=settings.mode.value,
             processes=settings.server_processes)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter each: nothing inherited mid-flight
    others = [spawn.Process(target=serve, args=(settings,), name=f"rastau-server-{n}")
              for n in range(2, settings.server_processes + 1)]
    for process in others:
        process.start()
    try:
        serve(settings)
    finally:
        for process in others:
            process.terminate()  # SIGTERM: each finishes its requests in flight, as this one did
        for process in others:
            process.join(SHUTDOWN_TIMEOUT_S + 5)
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
