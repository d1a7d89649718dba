"""desra: the application layer (command line, batch runs) on top of :mod:`desra_core`."""

from desra_core import __version__

__all__ = ["__version__"]
