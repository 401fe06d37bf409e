"""The audit's results: the typed audit.json (`document`), the advisory verdict (`verdict`), the CI gate
(`gate`) and `compare`."""
