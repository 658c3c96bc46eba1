"""How an influence index stores its gradient rows: float32, or 16-bit to halve the bytes.

The rows of ``gradients-<checkpoint>.npy`` are float32 (the reference), float16 or
bfloat16 (manifest field ``storage_dtype``). NumPy has no bfloat16, so bfloat16 rows are
stored as their raw 16-bit patterns (a ``uint16`` array) and viewed as ``torch.bfloat16``
when read. Rounding a float32 value to 16 bits changes it by at most ``2**-11`` (float16)
or ``2**-8`` (bfloat16) of its magnitude; the scorers widen 16-bit rows to float32 block
by block before every product, so sums are accumulated in float32 (per-layer totals in
float64) whatever the storage. float16 keeps more digits but overflows above 65,504 and
loses values below about ``6e-8``: a row that does not fit is refused, and bfloat16 (the
range of float32) is the safer 16-bit choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger.exceptions import AttributionInputError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

__all__ = [
    "STORAGE_DTYPES",
    "check_storage_dtype",
    "load_rows",
    "new_rows",
    "put_rows",
    "rows_tensor",
]

STORAGE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Dtypes an index may store its gradient rows in (``float32``: the reference)."""


def check_storage_dtype(storage_dtype: Any) -> None:
    """Raise unless ``storage_dtype`` is one of :data:`STORAGE_DTYPES`."""
    if storage_dtype not in STORAGE_DTYPES:
        raise AttributionInputError(
            f"storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}"
        )


def _numpy_dtype(storage_dtype: str) -> npt.DTypeLike:
    import numpy as np

    check_storage_dtype(storage_dtype)
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[storage_dtype]


def new_rows(target: Path | None, shape: tuple[int, int], storage_dtype: str) -> Any:
    """A zeroed ``shape`` array for rows in ``storage_dtype``: in memory, or a writable
    memory-mapped ``.npy`` file at ``target``."""
    import numpy as np

    dtype = _numpy_dtype(storage_dtype)
    if target is None:
        return np.zeros(shape, dtype=dtype)
    return np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=shape)


def put_rows(rows: Any, indices: Any, block: torch.Tensor, storage_dtype: str) -> None:
    """Write float32 ``block`` into ``rows[indices]``, rounded to ``storage_dtype``.

    Raises:
        AttributionInputError: A value does not fit float16 (use bfloat16).
    """
    import torch

    if storage_dtype == "float32":
        rows[indices] = block.float().numpy()
        return
    rounded = block.to(getattr(torch, storage_dtype))
    if storage_dtype == "float16" and not bool(torch.isfinite(rounded).all()):
        largest = float(block.abs().max())
        raise AttributionInputError(
            f"a gradient value ({largest:.3g}) exceeds float16's range (65504); "
            "store the index as bfloat16 or float32"
        )
    rows[indices] = rounded.view(torch.int16).numpy().view(_numpy_dtype(storage_dtype))


def rows_tensor(array: np.ndarray[Any, Any], storage_dtype: str) -> torch.Tensor:
    """The stored ``array`` as a tensor of ``storage_dtype`` (shares its memory)."""
    import torch

    check_storage_dtype(storage_dtype)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if storage_dtype == "bfloat16" else tensor


def load_rows(path: Path, storage_dtype: str) -> torch.Tensor:
    """Memory-map the rows saved at ``path`` as a tensor of ``storage_dtype``.

    Raises:
        AttributionInputError: The file's dtype is not the one ``storage_dtype`` stores.
    """
    import numpy as np

    array = np.load(path, mmap_mode="r")
    expected = np.dtype(_numpy_dtype(storage_dtype))
    if array.dtype != expected:
        raise AttributionInputError(
            f"{path} holds {array.dtype} values, but the index manifest says {storage_dtype} "
            f"(stored as {expected}); the index is damaged: rebuild it"
        )
    return rows_tensor(array, storage_dtype)
