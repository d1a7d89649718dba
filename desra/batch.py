"""Folder-level upscaling (``desra upscale``): every image of a folder through one SR model.

Every image gets one record; an image that cannot be processed gets a record with ``status ==
"failed"`` and the reason, and the others still run. Stems come from
:func:`desra_core.listing.list_image_entries`, so they are safe as file names, and entries it refuses
(a name that is not UTF-8, a symbolic link, a directory…) become failed records. The folder is opened
once and each file is opened once through it, without following a link, and read whole (at most
``DESRA_MAX_INPUT_MB``).
(``desra detect`` runs the pipeline's own steps: :mod:`desra.pipeline.stream`.)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from desra_core import DesraError, InputImageError
from desra_core.folder import Folder, max_input_bytes
from desra_core.image import read_image_bytes, write_image
from desra_core.listing import list_image_entries

if TYPE_CHECKING:
    from desra_core.models.sr import Precision, SRModel

__all__ = ["run_upscale"]


def run_upscale(model: SRModel, in_dir: Path, out_dir: Path, *, tile: int | None, overlap: int, batch_size: int,
                precision: Precision = "auto",
                progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> list[dict[str, Any]]:
    """Upscale every image of ``in_dir`` into ``out_dir/<stem>.png`` at the input's bit depth.

    An image whose result would exceed ``DESRA_MAX_OUTPUT_MPIX`` megapixels is refused from its header,
    before any pixel is decoded; its row names the file, its size, the output size and the limit.
    Returns one record per image: ``stem``, ``status``, ``error``, ``notes``, ``seconds``, ``path``.
    """
    from desra_core.image import read_image_size_bytes
    from desra_core.models.sr import check_output_size, max_output_pixels, upscale

    limit, max_bytes = max_output_pixels(), max_input_bytes()
    rows = []
    folder = Folder(in_dir)  # opened once; each file opened once through it, never through a link
    images = list_image_entries(folder)
    for stem in progress(images):
        start = time.perf_counter()
        row: dict[str, Any] = {"stem": stem, "status": "ok", "error": None, "notes": "", "path": None}
        size = None  # the input's own size, once its header has been read
        try:
            problem = images[stem].problem
            if problem is not None:
                raise InputImageError(problem)
            src = folder.read(images[stem].path.name, max_bytes=max_bytes)
            width, height = size = read_image_size_bytes(src.data, images[stem].path)
            check_output_size(width, height, model.scale, limit, images[stem].shown)
            loaded = read_image_bytes(src.data, images[stem].path)
            del src
            result = upscale(model, loaded.pixels, tile=tile, overlap=overlap, batch_size=batch_size,
                             precision=precision, out_dtype=np.uint8 if loaded.bit_depth == 8 else np.uint16)
            path = out_dir / f"{stem}.png"
            write_image(path, result)
            row.update(notes="; ".join(loaded.notes), path=str(path))
        except DesraError as e:
            row.update(status="failed", error=str(e))
        except Exception as e:  # report with its type, keep going with the rest
            row.update(status="failed", error=f"{type(e).__name__}: {e} (file: {images[stem].shown})")
        shown_size = None if size is None else f"{size[0]}×{size[1]}"
        if row["error"] is not None and size is not None and not re.search(rf"(?<!\d){shown_size}(?!\d)", row["error"]):
            row["error"] += f" (input: {shown_size} pixels)"
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    folder.close()
    return rows
