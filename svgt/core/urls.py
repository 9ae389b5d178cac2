"""URLs in messages, logs and params: credentials inside a URL are never shown, and such URLs are refused.

A base utility (standard library only): every layer may import it, it imports nothing of svgt.
"""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://***@host`` (for messages and logged values)."""
    return _URL_USERINFO.sub("***@", text)


def has_url_credentials(url: str) -> bool:
    """``scheme://user:password@host/...``: such URLs are refused, since URLs end up in params, logs and tags.

    Credentials come from the environment or profiles (AWS_*, MLFLOW_TRACKING_USERNAME/PASSWORD, ...).
    """
    return bool(_URL_USERINFO.search(url))
