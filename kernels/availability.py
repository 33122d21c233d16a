"""Whether the Triton backend can run here. Imports triton only when asked, never at import."""
from __future__ import annotations

import functools

MIN_TRITON = (3, 4)  # triton.knobs, tl.gather, tl.range(num_stages=...)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.lru_cache(maxsize=None)
def triton_unavailable_reason() -> str | None:
    """Why the Triton backend cannot run here (None when it can): triton missing, broken,
    or older than ``MIN_TRITON``. A GPU is not required (the interpreter runs on CPU)."""
    try:
        import triton
        import triton.language as tl
    except Exception as err:  # ImportError, or a broken install raising something else
        return f"triton does not import ({type(err).__name__}: {err}); pip install 'triton>={'.'.join(map(str, MIN_TRITON))}'"
    version = getattr(triton, "__version__", "0")
    if _version_tuple(version) < MIN_TRITON or not hasattr(triton, "knobs") or not hasattr(tl, "gather"):
        return f"triton {version} is too old: the kernels need triton >= {'.'.join(map(str, MIN_TRITON))}"
    return None


def triton_available() -> bool:
    """True when a recent enough ``triton`` imports (see :func:`triton_unavailable_reason`)."""
    return triton_unavailable_reason() is None
