"""The evaluate stage on the untouched test split, its statistics (intervals, verdicts), report, plots,
Grad-CAM, the latency timer and `hdkd ablate`."""
