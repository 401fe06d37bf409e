"""Metrics on real test data: discrimination, calibration, uncertainty, patient-level bootstrap."""
