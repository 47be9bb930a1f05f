"""Outcomes of a request to DIDWW, mapped once in worker.didww so retries read by class.

DidwwError
├── Retryable          the request surely did not take effect: try again later
│   ├── NotSent        connect error, connect or pool timeout, connection lost before writing
│   ├── RateLimited    429; carries Retry-After
│   └── ServerError    408, 500, 503
├── Rejected           400, 415, 422 and other 4xx: permanent for this message; DIDWW's detail
├── Halting            wrong for every message: stop the trunk until a probe or an operator
│   ├── AuthFailed     401: credentials or IP allow-list
│   └── Misdirected    3xx, 403, 404, 405, 407: a wrong SMSQ_DIDWW_URL or a proxy in the way
└── Ambiguous          the request may have reached DIDWW but no readable 201 came back: a read
                       timeout, a dropped connection after writing, 502, 504, other 5xx, a 2xx
                       other than a readable 201
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


class Halting(DidwwError):
    pass


class AuthFailed(Halting):
    pass


class Misdirected(Halting):
    pass


class Ambiguous(DidwwError):
    pass
