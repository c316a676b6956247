"""The ``e2vpt`` command line: train, eval, info."""
