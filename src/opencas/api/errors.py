"""How the API turns errors into responses: always JSON ``{error, message}``, never a traceback."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from opencas.errors import AttestationRefused, CasError, RateLimitedError, RecordDamagedError
from opencas.policy.errors import SessionError

log = logging.getLogger("opencas.api")

_HTTP_CODES = {
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The API's error body with ``status``."""
    return JSONResponse({"error": code, "message": message}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that shape every error the API returns."""

    @app.exception_handler(CasError)
    async def cas_error(_: Request, exc: CasError) -> JSONResponse:
        if isinstance(exc, RecordDamagedError):
            log.error("refused a request: %s", exc.message)
        body = exc.to_json()
        if isinstance(exc, SessionError):
            body["problems"] = exc.problems_json()
        if isinstance(exc, AttestationRefused):
            body["check"] = exc.check
        response = JSONResponse(body, status_code=exc.http_status)
        if isinstance(exc, RateLimitedError):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return error_response(400, "invalid-request", "; ".join(problems) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http-error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while answering a request")
        return error_response(500, "internal-error", "internal error; the CAS log has details")
