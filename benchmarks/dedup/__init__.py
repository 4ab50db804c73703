"""Dedup benchmark: synthetic near duplicates with known edit rates (see generate.py)."""
