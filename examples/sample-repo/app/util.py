def clamp(value: float, low: float, high: float) -> float:
    """Keep value within [low, high]."""
    return max(low, min(high, value))
