"""Three-stage training of LMGenDrive (paper section 3.5), plus stage 0 for the VAE of presets
trained from scratch: ``lmgd train --stage N|all --config FILE``.

Modules: :mod:`.config` (the YAML recipe), :mod:`.data` (seed scenes -> batches),
:mod:`.losses` (the stage losses), :mod:`.stages` (what each stage trains and on which loss),
:mod:`.schedule` (warm-up + cosine),
:mod:`.state` (exact-resume checkpoints, safetensors + JSON), :mod:`.backend` (one device or
`accelerate`), :mod:`.loop` (the training loop),
:mod:`.curves` (loss-curve PNGs), :mod:`.runner` (stages in order), :mod:`.cli` (the verb).
"""
