"""Connections to the replicas of one deployment: least-outstanding-requests choice and fail-over.

Replicas share one model repository and one concept store, so any replica can serve any request.
`ReplicaPool.call` sends a call to the replica with the fewest calls in flight from this pool
(ties: the one picked longest ago, so a lone client goes round the replicas). When the replica
turns out to be down — the call fails as `unavailable(exc)` says — the replica is avoided for
`retry_after_s` and the call is sent again to the next untried replica, each replica at most once
per call. Only idempotent calls may be retried: a generation (deterministic for its seed) and a
concept add (the store keeps one copy of a pack; a repeated add reports `changed: False`).

gRPC channels wait between reconnection attempts (by default growing to two minutes); these wait
at most `RECONNECT_BACKOFF_MS`, so a replica back from a restart gets requests within a second.
Until then its channel still fails calls with the last attempt's error ("Connection refused"), so
a call addressed to one replica (`call_on`) is tried once more after that wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clif_serve.errors import InputError

Result = TypeVar("Result")

RECONNECT_BACKOFF_MS = 500
RECONNECT_RETRY_S = 1.2 * RECONNECT_BACKOFF_MS / 1000  # gRPC jitters its back-off by up to 20 %
CHANNEL_ARGS = [
    # tritonclient's own defaults (replaced as a whole when channel_args is given) ...
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    # ... and a short reconnection back-off.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
]


def parse_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """`host:port` gRPC addresses from one string (comma-separated) or several; InputError naming `url`."""
    parts = [urls] if isinstance(urls, str) else list(urls)
    found = [url.strip() for part in parts for url in part.split(",") if url.strip()]
    if not found:
        raise InputError("url", "needs at least one host:port")
    for url in found:
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            raise InputError("url", f"{url!r} is not host:port")
    if len(set(found)) != len(found):
        raise InputError("url", f"names a replica twice: {', '.join(found)}")
    return tuple(found)


@dataclass
class Replica:
    """One replica's connection and what this pool knows of it."""

    url: str
    client: grpcclient.InferenceServerClient
    outstanding: int = 0  # calls of this pool in flight on it
    picked: int = 0  # when it was last picked (the pool's pick counter)
    down_until: float = 0.0  # monotonic time before which it is avoided


class ReplicaPool:
    """gRPC clients of several replicas; calls go to the least busy one and fail over to the others."""

    def __init__(
        self,
        urls: str | Sequence[str],
        unavailable: Callable[[InferenceServerException], bool],
        retry_after_s: float = 1.0,
    ):
        self.urls = parse_urls(urls)
        self.unavailable = unavailable
        self.retry_after_s = retry_after_s
        self.replicas = {
            url: Replica(url, grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)) for url in self.urls
        }
        self._lock = threading.Lock()
        self._picks = 0

    def replica(self, url: str | None = None) -> Replica:
        """The replica at `url` (default: the only one); InputError naming `url` otherwise."""
        if url is None and len(self.urls) == 1:
            url = self.urls[0]
        if url not in self.replicas:
            raise InputError("url", f"{url!r} is not one of this client's replicas: {', '.join(self.urls)}")
        return self.replicas[url]

    def _pick(self, tried: set[str]) -> Replica:
        """Claim the best untried replica: up before down, then fewest in flight, then picked longest ago."""
        with self._lock:
            now = time.monotonic()
            candidates = [replica for url, replica in self.replicas.items() if url not in tried]
            best = min(candidates, key=lambda r: (r.down_until > now, r.outstanding, r.picked))
            self._picks += 1
            best.picked = self._picks
            best.outstanding += 1
            return best

    def _release(self, replica: Replica, down: bool) -> None:
        with self._lock:
            replica.outstanding -= 1
            replica.down_until = time.monotonic() + self.retry_after_s if down else 0.0

    def call(self, call: Callable[[grpcclient.InferenceServerClient], Result], retry: bool = True) -> Result:
        """`call(client)` on the least busy replica; with `retry`, again on the next when it is unavailable.

        Any other error, or an unavailable last untried replica, propagates the exception.
        """
        tried: set[str] = set()
        while True:
            replica = self._pick(tried)
            tried.add(replica.url)
            down = False
            try:
                return call(replica.client)
            except InferenceServerException as exc:
                down = self.unavailable(exc)
                if not (retry and down and len(tried) < len(self.replicas)):
                    raise
            finally:
                self._release(replica, down)

    def call_on(self, url: str | None, call: Callable[[grpcclient.InferenceServerClient], Result]) -> Result:
        """`call(client)` on the replica at `url` (default: the only one); when it is unavailable, once more
        after the channel's longest reconnection wait (a server back from a restart may be up before its
        channel tries again). Other errors, and a second failure, propagate."""
        client = self.replica(url).client
        try:
            return call(client)
        except InferenceServerException as exc:
            if not self.unavailable(exc):
                raise
        time.sleep(RECONNECT_RETRY_S)
        return call(client)

    def outstanding(self) -> dict[str, int]:
        """Calls in flight per replica URL."""
        with self._lock:
            return {url: replica.outstanding for url, replica in self.replicas.items()}

    def close(self) -> None:
        for replica in self.replicas.values():
            replica.client.close()
