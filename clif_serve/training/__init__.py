"""CLIF training: contrastive concept-token tuning (stage 1), textual inversion (2), joint LoRA (3).

Entry point: `clif_serve.training.trainer.train(TrainConfig)`; the CLI adapter is `clif-serve train`.
See docs/training.md for the method, the defaults and where we deviate from the reference code.
"""
