"""Error envelopes (OpenAI, Gemini and Anthropic shapes), retry headers and key checks."""

from __future__ import annotations

import json
import math
import secrets

from aiohttp import web

# status -> (type, code, message) for the OpenAI envelope
OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (mock). Retry later."),
    500: ("server_error", None, "The server had an error processing your request (mock)."),
    503: ("service_unavailable_error", "server_is_overloaded", "The server is overloaded (mock)."),
}

# status -> (RPC status, message) for the Gemini envelope
GEMINI_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (mock)."),
    500: ("INTERNAL", "An internal error has occurred (mock)."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later (mock)."),
}

# status -> (error.type, message) for the Anthropic envelope; 503 (the fault plan's
# "overloaded") is said as Anthropic says it: 529 overloaded_error
ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limit reached (mock). Retry later."),
    500: ("api_error", "Internal server error (mock)."),
    529: ("overloaded_error", "Overloaded (mock)."),
}
ANTHROPIC_STATUS = {503: 529}


class MockError(Exception):
    """An error answer: HTTP status plus optional message, param and code for the envelope."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message or str(status))
        self.status, self.message, self.param, self.code = status, message, param, code


def retry_headers(status: int, retry_after_ms: int, with_ms: bool = True) -> dict[str, str]:
    """`retry-after-ms` (unless not with_ms) and `Retry-After` (whole seconds, rounded up)
    for a 429."""
    if status != 429:
        return {}
    seconds = {"Retry-After": str(max(1, math.ceil(retry_after_ms / 1000)))}
    return {"retry-after-ms": str(retry_after_ms), **seconds} if with_ms else seconds


def _json(body: dict, status: int, headers: dict[str, str]) -> web.Response:
    data = json.dumps(body, ensure_ascii=False).encode()
    return web.Response(body=data, status=status, content_type="application/json", headers=headers)


def openai_error_body(err: MockError) -> dict:
    """The OpenAI envelope {"error": {message, type, param, code}}."""
    kind, code, message = OPENAI_ERRORS.get(err.status, ("server_error", None, "Mock error."))
    inner = {"message": err.message or message, "type": kind, "param": err.param}
    return {"error": {**inner, "code": err.code or code}}


def openai_error(err: MockError, retry_after_ms: int) -> web.Response:
    """An OpenAI-style error response, with retry headers on 429."""
    return _json(openai_error_body(err), err.status, retry_headers(err.status, retry_after_ms))


def retry_delay(retry_after_ms: int) -> str:
    """A google.protobuf.Duration string such as "0.05s"."""
    return f"{retry_after_ms / 1000:g}s"


def gemini_error_body(err: MockError, retry_after_ms: int) -> dict:
    """The Gemini envelope {"error": {code, message, status, details}}."""
    status, message = GEMINI_ERRORS.get(err.status, ("UNKNOWN", "Mock error."))
    details = []
    if err.status == 429:
        delay = retry_delay(retry_after_ms)
        message = f"{message} Please retry in {delay}."
        details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
    inner = {"code": err.status, "message": err.message or message, "status": status}
    return {"error": {**inner, "details": details}}


def gemini_error(err: MockError, retry_after_ms: int) -> web.Response:
    """A Gemini-style error response, with RetryInfo and retry headers on 429."""
    body = gemini_error_body(err, retry_after_ms)
    return _json(body, err.status, retry_headers(err.status, retry_after_ms))


def bearer_key(request: web.Request) -> str | None:
    """The key of `Authorization: Bearer <key>`, else None."""
    value = request.headers.get("Authorization", "")
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def openai_authorized(request: web.Request, key: str) -> bool:
    """OpenAI auth: `Authorization: Bearer <key>`."""
    return bearer_key(request) == key


def gemini_authorized(request: web.Request, key: str) -> bool:
    """Gemini auth: x-goog-api-key, ?key=, Authorization: Bearer k, or raw Authorization: k."""
    if request.headers.get("x-goog-api-key") == key or request.query.get("key") == key:
        return True
    raw = request.headers.get("Authorization", "").strip()
    return raw == key or bearer_key(request) == key


def request_id() -> str:
    """A fresh Anthropic request id, req_…"""
    return "req_" + secrets.token_hex(12)


def anthropic_error_body(err: MockError, rid: str) -> dict:
    """The Anthropic envelope {"type": "error", "error": {type, message}, "request_id"}."""
    status = ANTHROPIC_STATUS.get(err.status, err.status)
    kind, message = ANTHROPIC_ERRORS.get(status, ("api_error", "Mock error."))
    inner = {"type": kind, "message": err.message or message}
    return {"type": "error", "error": inner, "request_id": rid}


def anthropic_error(err: MockError, retry_after_ms: int) -> web.Response:
    """An Anthropic-style error response (503 said as 529), request-id, and on a 429 the one
    retry header Anthropic documents: Retry-After, whole seconds (no retry-after-ms)."""
    rid = request_id()
    headers = {"request-id": rid, **retry_headers(err.status, retry_after_ms, with_ms=False)}
    status = ANTHROPIC_STATUS.get(err.status, err.status)
    return _json(anthropic_error_body(err, rid), status, headers)


def anthropic_authorized(request: web.Request, key: str) -> bool:
    """Anthropic auth: `x-api-key: <key>` (the docs) or `Authorization: Bearer <key>` (the SDK)."""
    return request.headers.get("x-api-key") == key or bearer_key(request) == key
