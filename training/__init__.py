"""FusionEdge training: models, data pipeline, losses, checkpoints and the training loop (PyTorch).

Importing this package is light (no torch); import the parts you need:

- ``fusionedge.training.models``: ``create_model(name, **overrides)``, ``list_models()``
- ``fusionedge.training.dataset``: decode a manifest into memory, serve augmented batches
- ``fusionedge.training.train``: ``TrainConfig`` and ``train(cfg)``; ``evaluation``: ``evaluate_model``
- ``fusionedge.training.pretrain``: ``PretrainConfig`` and ``pretrain(cfg)`` (objectives in ``contrastive``)
- ``fusionedge.training.loop`` / ``run_config`` / ``resume``: what both loops share (building blocks,
  ``RunConfig``, exact resume)
- ``fusionedge.training.checkpoint``: ``save_checkpoint``, ``load_checkpoint``, ``CheckpointError``

What was tried and measured to choose the defaults is in ``training/EXPERIMENTS.md``.
"""

__all__: list[str] = []
