"""Model loading: super-resolution and segmentation networks, and the table of known official weights."""

__all__: list[str] = []
