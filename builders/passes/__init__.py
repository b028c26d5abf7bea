"""Weight passes: pure functions from model and SAE weights to atlas rows.

One module per pass; each takes a feature range ``[start, end)`` so that the
build can split the work into independent units (SAE x pass x feature chunk).
"""
