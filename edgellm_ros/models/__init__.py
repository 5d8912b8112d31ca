"""Model descriptions and the NumPy reference forward."""
