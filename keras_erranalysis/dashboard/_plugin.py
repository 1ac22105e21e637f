"""The TensorBoard plugin: the "Error Analysis" tab, a dynamic plugin with an ES-module frontend.

Registered through the ``tensorboard_plugins`` entry point (setup.cfg), so TensorBoard finds
it once the package is installed. The routes (PLUGIN_API.md) answer with JSON computed by
:class:`~keras_erranalysis.dashboard.Dashboard`; the frontend is the static files shipped in
``keras_erranalysis/dashboard/static/``, and only those are served.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from keras_erranalysis.dashboard._catalog import find_runs
from keras_erranalysis.dashboard._queries import Dashboard
from keras_erranalysis.dashboard._store import QueryError
from keras_erranalysis.run import RunFormatError

PLUGIN_NAME = "erranalysis"
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
    ".md": "text/plain",
}
_ACTIVE_SECONDS = 10.0
logger = logging.getLogger(__name__)


class ErrorAnalysisPlugin(base_plugin.TBPlugin):
    """TensorBoard's "Error Analysis" tab over the run folders under the logdir.

    Args:
        context: TensorBoard's ``TBContext`` (its ``logdir`` is searched for run folders).
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._logdir = Path(context.logdir or ".")
        self._dashboard = Dashboard(self._logdir)
        self._active: tuple[bool, float] | None = None
        # Only the files that ship in static/, listed once: a request never builds a path.
        self._static = (
            {
                p.name: p
                for p in sorted(STATIC.iterdir())
                if p.is_file() and not p.is_symlink() and p.suffix in _STATIC_TYPES
            }
            if STATIC.is_dir()
            else {}
        )

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """The ES module TensorBoard loads in the tab's iframe, and the tab's name."""
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Error Analysis")

    def is_active(self) -> bool:
        """Whether the logdir holds a run folder of ours at any depth (re-checked every 10 s)."""
        now = time.monotonic()
        if self._active is None or now - self._active[1] > _ACTIVE_SECONDS:
            self._active = (bool(find_runs(self._logdir, max_runs=1)), now)
        return self._active[0]

    def get_plugin_apps(self) -> dict[str, Callable[..., Any]]:
        """The WSGI routes, relative to ``/data/plugin/erranalysis``."""
        d = self._dashboard
        apps = {
            "/index.js": self._serve_index,
            "/static/*": self._serve_static,
            "/image": self._serve_image,
        }
        for route, method in (
            ("/runs", d.runs),
            ("/examples", d.examples),
            ("/histogram", d.histogram),
            ("/example", d.example),
            ("/metrics", d.metrics),
            ("/map", d.map),
            ("/why", d.why),
            ("/compare", d.compare),
        ):
            apps[route] = _json_app(method)
        return apps

    @wrappers.Request.application
    def _serve_index(self, request: wrappers.Request) -> wrappers.Response:
        return self._static_file(request, "index.js")

    @wrappers.Request.application
    def _serve_static(self, request: wrappers.Request) -> wrappers.Response:
        name = request.path.rsplit("/static/", 1)[-1]
        return self._static_file(request, name)

    def _static_file(self, request: wrappers.Request, name: str) -> wrappers.Response:
        path = self._static.get(name)
        if path is None:
            return _error(
                request,
                QueryError(
                    f"No static file {name!r}: only the files shipped in "
                    "keras_erranalysis/dashboard/static/ are served (reinstall the package if "
                    "index.js is missing).",
                    404,
                ),
            )
        return http_util.Respond(request, path.read_bytes(), _STATIC_TYPES[path.suffix])

    @wrappers.Request.application
    def _serve_image(self, request: wrappers.Request) -> wrappers.Response:
        try:
            data, mime = self._dashboard.image(request.args)
        except QueryError as error:
            return _error(request, error)
        return http_util.Respond(request, data, mime)


def _json_app(method: Callable[[Any], dict[str, Any]]) -> Callable[..., Any]:
    """A WSGI app answering ``method(request.args)`` as JSON, errors as ``{"error": ...}``."""

    @wrappers.Request.application
    def app(request: wrappers.Request) -> wrappers.Response:
        try:
            body = method(request.args)
        except QueryError as error:
            return _error(request, error)
        except RunFormatError as error:
            return _error(request, QueryError(f"The run folder is damaged: {error}", 404))
        except Exception as error:  # a bug of ours: say so in JSON, keep the server up
            logger.exception("erranalysis: %s failed", request.path)
            message = (
                f"The server failed on this request ({type(error).__name__}: {error}); please "
                "report it at the keras_erranalysis issue tracker with the URL."
            )
            return _error(request, QueryError(message, 500))
        text = json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        return http_util.Respond(request, text, "application/json")

    return app


def _error(request: wrappers.Request, error: QueryError) -> wrappers.Response:
    text = json.dumps({"error": str(error)}, ensure_ascii=False)
    return http_util.Respond(request, text, "application/json", code=error.status)
