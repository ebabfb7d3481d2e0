"""Where the data folders live, in a source checkout and in an installed package alike."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder ``instructions`` / ``recipes`` / ``data_cards`` / ``sample_mirror``.

    Installed (wheel): the folders sit inside the package (``nvdata/<name>``).
    Source checkout or editable install: they are top-level siblings of ``pipeline/``.
    """
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"nvdata data folder {name!r} not found next to {_PKG}")


def sample_mirror_dir() -> Path:
    """The bundled sample mirror (a few Hub dataset repos, laid out as the Hub has them)."""
    return data_dir("sample_mirror")
