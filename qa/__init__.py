"""Feature extractors, Fréchet distances, per-horizon statistics and reports."""
