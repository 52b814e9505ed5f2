"""FusionEdge training: models, data pipeline, losses, checkpoints and the training loop (PyTorch).

Importing this package is light (no torch); import the parts you need:

- ``fusionedge.training.models``: ``create_model(name, **overrides)``, ``list_models()``
- ``fusionedge.training.dataset``: decode a manifest into memory, serve augmented batches
- ``fusionedge.training.train``: ``TrainConfig`` and ``train(cfg)``
- ``fusionedge.training.checkpoint``: ``save_checkpoint``, ``load_checkpoint``, ``CheckpointError``
"""

__all__: list[str] = []
