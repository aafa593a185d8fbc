# Type stub of the Rust extension module built from rust/xfd-py (mirrors rust/xfd-py/src/lib.rs).
import os

__all__ = ["__version__", "hash_file_range"]

__version__: str

def hash_file_range(path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> str:
    """BLAKE3 hex digest of ``length`` bytes of ``path`` from ``offset`` (``None``: to the end of the file).

    The GIL is released while the file is read.

    Raises:
        FileNotFoundError, PermissionError, OSError: the file cannot be opened or read.
        xfd.errors.RangeError: the range does not lie inside the file.
    """
