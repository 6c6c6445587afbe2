"""Watching where models look in production: per-model signal histograms, attribution drift
against a baseline, sampled explanations of /predict traffic (docs/monitoring.md)."""
