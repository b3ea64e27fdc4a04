"""The one error type of the billing room: a message for people and the field (or parameter) it is about."""

from __future__ import annotations


class BillingError(ValueError):
    """Bad input or a refused operation; ``field`` names what was wrong (``blocks[1].multiplier``, ``month``)."""

    def __init__(self, message: str, field: str | None = None, *, status: int = 400):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status  # 400 bad input, 404 unknown, 409 conflicts with what is stored


class NotFound(BillingError):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message, field, status=404)


class Conflict(BillingError):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message, field, status=409)
