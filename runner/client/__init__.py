"""One target's client: limits, pacing, retries, the reply cache; providers/ speaks each
protocol."""
