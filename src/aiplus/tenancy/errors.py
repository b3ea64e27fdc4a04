"""Failures of tenancy operations; the HTTP edge maps them to OpenAI error envelopes."""

from __future__ import annotations


class TenancyError(ValueError):
    """Base class: ``param`` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(TenancyError):
    pass


class Conflict(TenancyError):
    pass


class Invalid(TenancyError):
    pass


class AuthUnavailable(RuntimeError):
    """The key store cannot be reached and nothing trustworthy is cached: answer 503, never 401."""
