"""Probes of how stable an explanation is: two model versions compared, the same image
transformed, and adversarial perturbations (docs/probes.md)."""
