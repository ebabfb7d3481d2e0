"""Output safety, atomic folder publishing and file checksums, shared by every stage that writes.

Rule (one place for every command): a command replaces only an earlier output of its own kind
(recognised by its marker file) or an empty folder; anything else is refused before any work.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nvdata.errors import NvdataError

# The files that mark a folder as an earlier output of each kind (any one is enough).
OUTPUT_MARKERS: dict[str, tuple[str, ...]] = {
    "build": ("manifest.json",),
    "export": ("nvdata-export.json",),
    # a finished run, or an interrupted one that a re-run resumes from
    "train": ("train_summary.json", "checkpoints", "metrics.jsonl"),
    "miner": ("config_sentence_transformers.json", "modules.json"),
    "sample-mirror": ("PLANTS.json",),
}


def _is_within(inner: Path, outer: Path) -> bool:
    """True when ``inner`` is ``outer`` or lies inside it (both resolved)."""
    return inner == outer or outer in inner.parents


def check_output_dir(
    path: Path,
    kind: str,
    *,
    overwrite: bool = False,
    cache: Path | None = None,
    inputs: Iterable[Path] = (),
) -> Path:
    """Refuse (``NvdataError``, naming the path) an output folder a ``kind`` command may not replace.

    Allowed: a path that does not exist, an empty folder, or a folder holding one of
    ``OUTPUT_MARKERS[kind]`` (an earlier output of the same kind). ``overwrite`` also allows any
    other non-empty folder. Never allowed, whatever ``overwrite`` says: a file, the current
    directory or one of its parents, the home folder or one of its parents, the cache folder or a parent of it, and any of ``inputs``
    (the data the command reads), a parent of one or a folder inside one. Call it before any work. Returns the
    resolved path.
    """
    if kind not in OUTPUT_MARKERS:
        raise ValueError(f"unknown output kind {kind!r}")
    given = Path(path)
    p = given.expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise NvdataError(f"output {given} is a file, not a folder: give a folder path (nothing was written)")
    if _is_within(Path.cwd().resolve(), p):
        raise NvdataError(f"output {given} is the current directory or contains it: give a subfolder "
                          "(nothing was written)")
    if _is_within(Path.home().resolve(), p):
        raise NvdataError(f"output {given} is your home folder or contains it: give a subfolder "
                          "(nothing was written)")
    if cache is not None and _is_within(Path(cache).expanduser().resolve(), p):
        raise NvdataError(f"output {given} is the cache folder {cache} or contains it: give another folder "
                          "(nothing was written)")
    for inp in inputs:
        if inp is None:
            continue
        q = Path(inp).expanduser().resolve()
        if _is_within(q, p) or _is_within(p, q):  # the input inside the output, or the output inside it
            raise NvdataError(f"output {given} would replace (part of) the input {inp}: give a folder outside it "
                              "(nothing was written)")
    if not p.is_dir() or not any(p.iterdir()):
        return p
    markers = OUTPUT_MARKERS[kind]
    if any((p / m).exists() for m in markers) or overwrite:
        return p
    raise NvdataError(
        f"output {given} is not empty and is not an earlier nvdata {kind} output (no {' or '.join(markers)}): "
        "choose a new or empty folder, or pass --overwrite to replace it (nothing was written)"
    )


@contextmanager
def removed_on_failure(path: Path, *, keep: str | None = None) -> Iterator[None]:
    """Remove ``path`` if the block fails and ``path`` did not exist before it, unless it now
    holds something matching the glob ``keep`` (a checkpoint a re-run resumes from)."""
    path = Path(path)
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir() and not (keep and any(path.glob(keep))):
            shutil.rmtree(path, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def staged_dir(final: Path, *, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty temp folder beside ``final``; when the block succeeds it replaces ``final``.

    The old ``final`` (if any) is moved aside only after the new one is complete and removed
    after the swap, so a crash at any point leaves either the old folder or the new one, never a
    half-written mix. On failure the temp folder is deleted and ``final`` is untouched. The
    published folder gets the permissions ``mkdir`` would give (``0o777 & ~umask``: 0755 under
    umask 022), not ``mkdtemp``'s private 0700. A ``final`` that is a file is refused
    (``NvdataError``): only folders are replaced.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise NvdataError(f"{final} is a file, not a folder: not replacing it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        normalize_permissions(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def normalize_permissions(root: Path, *, newer_than: float | None = None) -> None:
    """Give ``root`` and everything under it the permissions a plain ``open``/``mkdir`` would
    (``0o666`` / ``0o777`` minus the umask; executables keep their x bits). Libraries that write
    through ``mkstemp`` leave private 0600 files (safetensors' model files did), which colleagues
    on a shared cluster could not read. ``newer_than`` (a ``time.time()``): only what was
    written since then, so a user's own files in an ``--overwrite`` folder keep their modes."""
    umask = _umask()
    os.chmod(root, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            q = os.path.join(dirpath, d)
            if newer_than is None or os.stat(q).st_mtime >= newer_than:
                os.chmod(q, 0o777 & ~umask)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or (newer_than is not None and os.stat(p).st_mtime < newer_than):
                continue
            x = 0o111 if os.stat(p).st_mode & 0o100 else 0
            os.chmod(p, (0o666 | x) & ~umask)


def mirror_fingerprint(repo_dir: Path) -> list:
    """Cheap identity of a mirrored repo: every file's relative path, size and mtime (ns).

    Keys the download cache and the test-set index, so a mirror updated in place is re-read.
    """
    out = []
    for p in sorted(Path(repo_dir).rglob("*")):
        if p.is_file() and ".cache" not in p.parts:
            st = p.stat()
            out.append([p.relative_to(repo_dir).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
