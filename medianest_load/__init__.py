"""MediaNest load-testing harness: scenarios -> runner -> Locust users -> recorder -> results -> analysis."""

__version__ = "0.1.0"
