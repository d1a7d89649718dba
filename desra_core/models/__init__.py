"""Model loading: super-resolution and segmentation networks, and the table of known official weights.

:data:`DEFAULT_SEGMENTER` lives here, not in :mod:`.segmentation`, so that the run's options (and the command
line's help) can name it without loading torch.
"""

__all__ = ["DEFAULT_SEGMENTER"]

DEFAULT_SEGMENTER = "nvidia/segformer-b5-finetuned-ade-640-640"
"""The paper's segmenter: SegFormer-B5 trained on ADE20K at 640×640 (a Hugging Face hub id)."""
