"""nvdata: NV-Embed-style embedding training data, made reproducible and auditable.

The package imports as ``nvdata``; its code lives in ``pipeline/`` of the repository.
Follow one row from ``sources`` (download) -> ``decontam`` -> ``instruct`` (format)
-> ``mine`` (hard negatives) -> ``emit`` (shards) -> ``train``.
"""

__version__ = "0.1.0"


def load_model(path, device=None):
    """Load a checkpoint written by ``nvdata train`` (encoder or decoder + latent attention)."""
    from nvdata.train.model import load_model as _load

    return _load(path, device=device)
