"""nvdata: NV-Embed-style embedding training data, made reproducible and auditable.

The package imports as ``nvdata``; its code lives in ``pipeline/`` of the repository.
Follow one row from ``sources`` (download) -> ``decontam`` -> ``instruct`` (format)
-> ``mine`` (hard negatives) -> ``emit`` (shards) -> ``train``.
"""

__version__ = "0.1.0"


def load_model(path, device=None, *, base_model=None, bf16=None):
    """Load a checkpoint written by ``nvdata train`` (encoder or decoder + latent attention).

    Returns an object with ``encode(texts, instruction=None)``; ``base_model`` relocates the
    base of a LoRA checkpoint; ``bf16`` defaults to on for CUDA, off for CPU.
    """
    from nvdata.train.model import load_model as _load

    return _load(path, device=device, base_model=base_model, bf16=bf16)
