"""A token bucket: the service's request limiter (the sample repository of examples/alert-triage-fix.yaml)."""


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = 0.0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens > 1:
            self.tokens -= 1
            return True
        return False
