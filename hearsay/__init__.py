"""Hearsay's cross-app contracts, each declared once: errors, the stimulus manifest, the answer table,
the rating scale, MTurk results files, resumable run folders and provenance.

Plain Python (numpy/pandas at most): no Django and no torch, so generation, evaluation and analysis
can all import it without importing each other.
"""
