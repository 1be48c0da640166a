"""headgame inside other people's training code.

``headgame.integrations.transformers``: :class:`HeadCouplingCallback` (Γ of chosen layers logged
by any ``transformers.Trainer``), :class:`GameLoraTrainer` (the GAME-LoRA objective of
``headgame train`` inside ``Trainer``) and ``GameLoraSFTTrainer`` (the same on TRL's
``SFTTrainer``). Nothing is imported until a submodule is.
"""
