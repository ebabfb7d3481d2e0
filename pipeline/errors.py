"""One exception type for bad input, so the CLI can print it plainly and exit non-zero."""


class NvdataError(Exception):
    """Bad input or configuration: the message names the source, row or field at fault."""
