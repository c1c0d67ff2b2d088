"""The web dashboard for clinic admins and auditors (issue 13): server-rendered pages at ``/web``, a sub-application
of the verification server with its own session middleware, CSRF check, security headers and templates.

How a page is added: server/web/README.md — a view function in a module of server/web/ registered on its
``routes``, a template extending ``base.html``, a nav entry in :data:`NAV`.
"""
from __future__ import annotations

from server.web.app import NAV, NavEntry, create_web_app, web_user

__all__ = ["NAV", "NavEntry", "create_web_app", "web_user"]
