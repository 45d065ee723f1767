"""Training: one epoch and its step, the optimizer and schedule, exact resume, clean stops."""
