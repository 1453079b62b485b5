"""The ASGI app: pages, ``/api``, ``/metrics``, static assets, the optional token check (without one, only
requests sent to an IP address or localhost), and the refusal of requests that a page of another origin sends
to change something (cross-site request forgery)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskq.monitor import api, pages
from taskq.monitor.core import Monitor
from taskq.errors import TaskqError

STATIC = Path(__file__).parent / "static"
COOKIE = "taskq_monitor_token"
OPEN_PATHS = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: on every answer: no page of another origin frames ours (a framed "Replay all" button can be clicked by a user
#: who thinks they click something else), and the browser runs nothing but our own script file
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
                               "object-src 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
Handler = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def create_app(monitor: Monitor) -> FastAPI:
    """The web app for ``monitor`` (which the caller starts and stops)."""
    import taskq

    # no Swagger/ReDoc pages: they load their scripts from a CDN, and every asset here ships offline
    web = FastAPI(title="taskq monitor", version=taskq.__version__, docs_url=None, redoc_url=None,
                  description="Tasks, workers, topics, lag and dead letters of a taskq app.")
    web.state.monitor = monitor
    web.include_router(api.router(monitor))
    web.include_router(pages.router(monitor))
    web.mount("/static", StaticFiles(directory=STATIC), name="static")

    @web.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """A page's error as a page (with the menu) for a browser; JSON for the API and other clients."""
        if request.url.path.startswith("/api") or "text/html" not in request.headers.get("accept", ""):
            return await http_exception_handler(request, exc)
        return pages.error_page(request, exc.status_code, str(exc.detail))

    @web.exception_handler(TaskqError)
    def unavailable(_request: Request, exc: TaskqError) -> Response:
        """A page that reads the broker or result backend while it is down (the API says so on its own)."""
        return JSONResponse({"detail": f"broker or result backend unavailable: {exc}"}, status_code=503)

    @web.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(monitor.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if monitor.config.token:
        web.middleware("http")(_token_check(monitor.config.token))
    else:
        web.middleware("http")(_addressed_by_ip_or_localhost)
    web.middleware("http")(_same_origin_writes)
    web.middleware("http")(_security_headers)
    return web


async def _security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _same_origin_writes(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Refuse a POST (replay, submit) that a browser sends for a page of another origin: the cookie or the
    loopback address would otherwise let any page the user opens replay dead letters."""
    if request.method not in SAFE_METHODS and _cross_origin(request):
        return JSONResponse({"detail": "cross-origin request refused: use the monitor's own pages, or send it "
                                       "without a browser"}, status_code=403)
    return await call_next(request)


async def _addressed_by_ip_or_localhost(request: Request,
                                        call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Without a token, answer only requests sent to an IP address or ``localhost``: a page on another host name
    that its DNS later points at 127.0.0.1 (DNS rebinding) would otherwise read and replay as if it were ours."""
    host = _host_name(request.headers.get("host", "").lower())
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return JSONResponse({"detail": f"requests for host name {host!r} are refused without a token: open the "
                                           "monitor by its IP address or localhost, or start it with --token"},
                                status_code=403)
    return await call_next(request)


def _host_name(host: str) -> str:
    """The name or address of a ``Host`` header, without the port (``[::1]:5555`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _cross_origin(request: Request) -> bool:
    """Sent by a browser for another origin: ``Sec-Fetch-Site`` says so, or (older browsers) ``Origin``
    names another host than the request's ``Host``. Clients that are not browsers send neither."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")


def _token_check(token: str) -> Handler:
    """Require ``Authorization: Bearer <token>``, ``?token=`` (which sets a cookie) or the cookie."""

    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith(OPEN_PATHS):
            return await call_next(request)
        given = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        candidates = [given, header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None,
                      request.cookies.get(COOKIE)]
        if not any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates):
            return JSONResponse({"detail": "token required: send 'Authorization: Bearer <token>' or open "
                                           "the page once with ?token=<token>"}, status_code=401)
        if given and request.method == "GET" and not request.url.path.startswith("/api"):
            response: Response = RedirectResponse(str(request.url.remove_query_params("token")), 303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return await call_next(request)

    return check
