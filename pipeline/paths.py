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


def default_cache_dir() -> Path:
    """The one cache every command shares when ``--cache`` is not given.

    ``$NVDATA_CACHE`` when set, else ``$XDG_CACHE_HOME/nvdata`` (``~/.cache/nvdata``): one place
    per user, whatever the current directory or ``--out``, so ``nvdata download`` then ``nvdata
    build`` reuse the same download.
    """
    import os

    env = os.environ.get("NVDATA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "nvdata"
