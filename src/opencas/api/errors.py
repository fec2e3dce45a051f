"""How the API turns errors into responses: always JSON ``{error, message}``, never a traceback.

Every :class:`CasError` answers with its own JSON form and headers; the API's own request
validation answers as :class:`InvalidRequest`, its problems in the same ``problems[]`` shape as
an invalid config or session.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from opencas.errors import CasError, InvalidRequest
from opencas.sources.problems import joined_key, validation_problems

log = logging.getLogger("opencas.api")

REQUEST = ""
"""How problems name the request itself: no text of its own, so their messages start at the key."""

_HTTP_CODES = {
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The API's error body with ``status``."""
    return JSONResponse({"error": code, "message": message}, status_code=status)


def cas_error_response(error: CasError) -> JSONResponse:
    """The answer to a request refused with ``error``: its JSON form, status and headers."""
    return JSONResponse(error.to_json(), status_code=error.http_status, headers=error.headers())


def invalid_request(error: RequestValidationError) -> InvalidRequest:
    """The request validation ``error`` as :class:`InvalidRequest`, one problem per field.

    Each problem's key is the field's location as FastAPI gives it (``body.token``,
    ``query.session``), and its message pydantic's.
    """
    return InvalidRequest(
        validation_problems(error.errors(), source=REQUEST, key=joined_key), source=REQUEST
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that shape every error the API returns."""

    @app.exception_handler(CasError)
    async def cas_error(_: Request, exc: CasError) -> JSONResponse:
        if exc.logged:
            log.error("refused a request: %s", exc.message)
        return cas_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return cas_error_response(invalid_request(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http-error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while answering a request")
        return error_response(500, "internal-error", "internal error; the CAS log has details")
