"""The bundled trainer: the reference consumer of nvdata's shards (NV-Embed's two stages).

Open the files in this order: ``data`` (shards -> batches and negative masks), ``model``
(encoder / bidirectional decoder + latent attention + LoRA), ``loss`` (InfoNCE; length-sorted
chunks under a token budget, GradCache), ``loop`` (``TrainConfig``, ``train``, checkpoints,
resume, interrupt), ``progress`` (the bar / log lines).

    from nvdata.train import TrainConfig, train
    train(TrainConfig(max_steps=100), data_dir=Path("build"), model="minilm", out=Path("out"))
"""

from nvdata.train.loop import STAGE_DEFAULTS, TrainConfig, train
from nvdata.train.model import EmbeddingModel, load_model

__all__ = ["STAGE_DEFAULTS", "EmbeddingModel", "TrainConfig", "load_model", "train"]
