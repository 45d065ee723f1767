"""Plumbing every stage uses: one-line errors, process groups, timing, devices and safe outputs."""
