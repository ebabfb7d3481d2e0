"""One exception type for bad input, so the CLI can print it plainly and exit non-zero."""


from collections.abc import Iterable


class NvdataError(Exception):
    """Bad input or configuration: the message names the source, row or field at fault."""


def reject_unknown_keys(mapping: Iterable[str], known: Iterable[str], where: str) -> None:
    """Raise naming ``where.key`` for the first (sorted) key of ``mapping`` not in ``known``:
    a misspelt option must fail, not fall back to its default."""
    known = sorted(known)
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise NvdataError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(known)})")
