"""Locust user classes for MediaNest, one module per kind of traffic; `medianest.py` is the entry file."""
