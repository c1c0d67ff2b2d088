"""``python -m server`` / ``rastau-server``: serve the verification API until SIGINT/SIGTERM, then finish the
requests in flight (up to ``SHUTDOWN_TIMEOUT_S``) and close the database and face workers."""
from __future__ import annotations

from aiohttp import web

from core.config import Settings
from core.logs import configure_logging, get_logger
from server.app import create_app

SHUTDOWN_TIMEOUT_S = 30.0
log = get_logger("rastau.server")


def main() -> int:
    settings = Settings().require_secrets()  # production without secrets exits here, naming each one
    configure_logging(settings.log_level, settings.log_format)
    log.info("server starting", host=settings.server_host, port=settings.server_port, mode=settings.mode.value)
    web.run_app(create_app(settings), host=settings.server_host, port=settings.server_port,
                shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None, print=None)
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
