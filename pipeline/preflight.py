"""Checks a command runs before any work: the output path, the device, the encoder path.

A wrong ``--out`` / ``--device`` / ``--encoder`` must fail in the first second, not after the
download, decontamination and formatting it would otherwise sit behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nvdata.fsutil import check_output_dir


def check_device(device: str | None) -> None:
    """``NvdataError`` for a device that is not a torch device or is CUDA without a GPU."""
    if device is None or device in ("auto", "cpu"):
        return
    from nvdata.mine.encode import resolve_device

    resolve_device(device)


def check_encoder(encoder: str | Path | None) -> None:
    """``NvdataError`` for an encoder given as a local path that is missing or is not a model.

    A Hub id is resolved when it is first loaded (that may download it); None is the bundled one.
    """
    if encoder is None:
        return
    from nvdata.mine.encode import _resolve_model_dir

    name = str(encoder)
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        _resolve_model_dir(name)


def preflight(
    out: Path,
    kind: str,
    *,
    overwrite: bool = False,
    cache: Path | None = None,
    inputs: Iterable[Path] = (),
    device: str | None = None,
    encoder: str | Path | None = None,
) -> Path:
    """Run every check (output folder first); returns the resolved output path."""
    resolved = check_output_dir(out, kind, overwrite=overwrite, cache=cache, inputs=inputs)
    check_device(device)
    check_encoder(encoder)
    return resolved
