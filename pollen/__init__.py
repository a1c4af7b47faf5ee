"""The ``pollen`` command line: the top layer, composing simulations, server and SDK."""

__version__ = "0.1.0"
