"""Flow control: `Concurrency`, `Throttle`, and the limiters that enforce them (C25-C28)."""
