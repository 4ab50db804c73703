"""Cluster benchmark: local[N] against a standalone cluster on the same input (see __main__)."""
