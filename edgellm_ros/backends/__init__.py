"""Inference backends. Each imports its vendor library lazily, so a missing
library is a clear BackendUnavailable error and not an ImportError at start."""
