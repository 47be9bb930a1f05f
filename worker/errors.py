"""Outcomes of a request to DIDWW, mapped once in worker.didww so retries read by class.

DidwwError
├── Retryable          the request surely did not take effect: try again later
│   ├── NotSent        connect error, connect or pool timeout
│   ├── RateLimited    429; carries Retry-After
│   └── ServerError    5xx
├── Rejected           400 (or 415): permanent for this message; carries DIDWW's detail
├── AuthFailed         401: credentials or IP allow-list wrong for every message
└── Ambiguous          the request may have reached DIDWW but no answer came back
"""

from __future__ import annotations

from ledger.errors import SmsqError


class DidwwError(SmsqError):
    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class Retryable(DidwwError):
    retry_after_s: float | None = None


class NotSent(Retryable):
    pass


class RateLimited(Retryable):
    def __init__(self, detail: str, retry_after_s: float | None) -> None:
        super().__init__(detail, 429)
        self.retry_after_s = retry_after_s


class ServerError(Retryable):
    pass


class Rejected(DidwwError):
    pass


class AuthFailed(DidwwError):
    pass


class Ambiguous(DidwwError):
    pass
