"""Per-client rate limits on what costs the server the most: new sessions (offers, POST /sessions,
viewers, sockets) and avatar uploads. A token bucket per client address: `per_minute` tokens a
minute, at most `per_minute` saved up (a burst), so a page that reconnects now and then is never
refused while a client looping on /offer is, with a Retry-After."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable


class RateLimiter:
    def __init__(self, per_minute: float, max_clients: int = 10_000,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, float(per_minute))
        self._now = now
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._max_clients = max_clients

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, client: str) -> float:
        """0 when `client` may go ahead (one token taken), else the seconds until it may."""
        if not self.enabled:
            return 0.0
        now = self._now()
        tokens, at = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self._max_clients:  # the longest-quiet clients are forgotten
            self._buckets.popitem(last=False)
        return wait
