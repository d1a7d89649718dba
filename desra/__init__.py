"""desra: the application layer (command line, batch runs) on top of :mod:`desra_core`."""

__all__: list[str] = []
