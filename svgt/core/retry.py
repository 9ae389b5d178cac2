"""Retry with exponential backoff for remote reads (s3://, any fsspec URL) when the endpoint is unreachable.

Only connection trouble is retried (refused/reset connections, timeouts, DNS): a missing object, a denied
request or a full disk fails at once, since waiting would not change the answer. After the last attempt a
:class:`RetryError` names what was being done (URL with any inline credentials redacted), the attempts and
the last error. The policy comes from the caller or from the environment (``SVGT_RETRY_ATTEMPTS``,
``SVGT_RETRY_BASE_DELAY``, ``SVGT_RETRY_MAX_DELAY``), so an operator can widen it for a flaky network.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from svgt.core.errors import BadInput, StepFailed, Transient, VerificationFailed
from svgt.core.urls import redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")

# OSErrors that describe the request or the local machine, not the network: retrying cannot help
_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# HTTP/S3 client libraries whose *connection* and *timeout* exceptions do not derive from OSError
_NETWORK_LIBRARIES = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "httpx", "httpcore"})


class RetryError(Transient, ConnectionError):
    """A remote operation still failed after every attempt (a ConnectionError: a later rerun may succeed)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, the first included
    base_delay: float = 1.0  # seconds before the 2nd try; doubled before each later one
    max_delay: float = 30.0  # cap on one wait

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"retry delays must be >= 0, got base {self.base_delay}, max {self.max_delay}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.base_delay * 2 ** (attempt - 1), self.max_delay)

    @classmethod
    def from_env(cls) -> RetryPolicy:
        defaults = cls()
        try:
            return cls(
                int(os.environ.get("SVGT_RETRY_ATTEMPTS", defaults.attempts)),
                float(os.environ.get("SVGT_RETRY_BASE_DELAY", defaults.base_delay)),
                float(os.environ.get("SVGT_RETRY_MAX_DELAY", defaults.max_delay)),
            )
        except ValueError as err:
            raise ValueError(f"SVGT_RETRY_* environment variables: {err}") from None


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is connection trouble that a later try may not meet."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            if not isinstance(current, _PERMANENT_OS_ERRORS) and current.errno not in _PERMANENT_ERRNOS:
                return True
        elif any(
            c.__module__.split(".")[0] in _NETWORK_LIBRARIES and ("Connect" in c.__name__ or "Timeout" in c.__name__)
            for c in type(current).__mro__
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


# Ray's own failures (a process, an actor, a node or an object lost): a rerun gets new ones
_RAY_SYSTEM_FAILURES = frozenset({"RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
                                  "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError",
                                  "ObjectReconstructionFailedError", "RaySystemError"})


def _ray_failure_is_transient(exc: BaseException) -> bool:
    """A Ray error: transient if Ray itself failed; if it wraps errors from our code (a task's ``cause``, a Train
    run's ``worker_failures``), as transient as those are: a worker that refused its config fails again."""
    if type(exc).__name__ in _RAY_SYSTEM_FAILURES:
        return True
    failures = getattr(exc, "worker_failures", None)
    wrapped = [*(failures.values() if isinstance(failures, dict) else ()), getattr(exc, "cause", None), exc.__cause__]
    return any(is_transient(e) for e in wrapped if isinstance(e, BaseException))


def is_transient(exc: BaseException) -> bool:
    """Whether running the step again could help: the one rule for `svgt`'s exit code 75 and Prefect's retries.

    Walking the chain of errors ``exc`` was raised from: a ``Transient`` error (a connection that kept failing) or
    a failure of Ray itself (a lost node, actor or object) is, and a Ray error wrapping our code's error is as
    transient as that error; bad input, a failed verification, validation or gate is not, since a retry fails the
    same way after repeating up to an hour of work; otherwise connection trouble decides
    (``is_connection_error``: a full disk, a missing file or a denied request will not go away), so an error
    raised from a ConnectionError (say a RegistryError) is transient.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Transient):
            return True
        if isinstance(current, BadInput | VerificationFailed | StepFailed):
            return False
        if any(cls.__module__.split(".")[0] == "ray" for cls in type(current).__mro__):
            return _ray_failure_is_transient(current)
        current = current.__cause__
    return is_connection_error(exc)


def retry_call(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy | None = None,
    *,
    retry_if: Callable[[BaseException], bool] = is_connection_error,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, retried with exponential backoff while it raises connection errors.

    ``what`` describes the operation in logs and errors (e.g. ``"listing s3://bucket/prefix"``); inline URL
    credentials in it are redacted. Each failure logs ``retrying in Xs (attempt i/n)``.
    """
    policy = policy or RetryPolicy.from_env()
    what = redact_url(what)
    t0 = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as err:
            if not retry_if(err):
                raise
            reason = redact_url(f"{type(err).__name__}: {err}".splitlines()[0])
            if attempt == policy.attempts:
                raise RetryError(
                    f"{what}: still failing after {policy.attempts} attempts over {time.monotonic() - t0:.1f}s "
                    f"({reason})"
                ) from err
            wait = policy.delay(attempt)
            log.warning(
                "%s failed (%s); retrying in %.1fs (attempt %d/%d)", what, reason, wait, attempt, policy.attempts
            )
            sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises
