"""Serving releases to devices: the repository's HTTP server, deltas, timestamp renewal, imports."""
