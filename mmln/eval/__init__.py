"""Benchmark scorers (MME, POPE, VQAv2, captioning): pure functions of answers and references."""
