"""A small HTTP client for ``vaegan-serve`` (standard library only).

``predict(url, image_bytes, retries=3)`` POSTs one encoded image to ``url`` (the service's base URL or its
``/predict`` URL) and returns the decoded JSON answer. A 5xx answer (Serve's while a replica or node is lost, or the
service's own ``purification failed``) and a lost or refused connection are retried up to ``retries`` times with
exponential backoff; a 4xx is the request's own fault and raises ``ServeError`` at once. When the retries are spent
the last failure raises ``ServeError``: a request is answered or fails loudly, never dropped.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

RETRY_STATUSES = (500, 502, 503, 504)


class ServeError(Exception):
    """The service refused the request (``status`` 4xx) or kept failing (5xx / no connection, ``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def predict_url(url: str, purified: bool = False) -> str:
    base = url.rstrip("/")
    if not base.endswith("/predict"):
        base += "/predict"
    return base + ("?purified=1" if purified else "")


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body.strip() else "(empty body)"


def predict(url: str, image_bytes: bytes, retries: int = 3, timeout: float = 30.0, backoff: float = 0.2,
            purified: bool = False, on_retry=None) -> dict:
    """The service's answer for one image (``class_id``, ``class_name``, ``confidence``, ``loss``, and
    ``purified`` as base64 PNG when asked). ``on_retry(attempt, status_or_None, message)`` is called before each
    retry. Raises ``ServeError``."""
    target = predict_url(url, purified)
    for attempt in range(retries + 1):
        req = urllib.request.Request(target, data=image_bytes, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            status, message = e.code, _message(e.read())
            if status not in RETRY_STATUSES:
                raise ServeError(f"{target}: {status} {message}", status) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
            status, message = None, f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if attempt == retries:
            raise ServeError(f"{target}: failed after {retries + 1} attempts, last: "
                             f"{status if status is not None else 'no answer'} {message}", status)
        if on_retry is not None:
            on_retry(attempt + 1, status, message)
        time.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")
