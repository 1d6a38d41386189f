"""The records a run writes and everything that reads them: store, stats, reports, diffs,
exports, the compare page."""
