"""The LMGenDrive network and its training recipe; knows nothing of Ray, shards or S3.

Entry points (import the submodules; this package import stays light):

* :func:`lmgendrive.checkpoint.load_checkpoint` / :func:`~lmgendrive.checkpoint.save_checkpoint` —
  checkpoints, with the model id + sha256 for metadata
  (:class:`~lmgendrive.checkpoint.ModelIdentity`); :func:`lmgendrive.checkpoint_meta.source_config`
  reads a checkpoint's config without its weights.
* :class:`lmgendrive.model.LMGenDrive` — ``rollout`` / ``start`` + ``step`` (offline generation),
  ``plan`` (online planning); :mod:`lmgendrive.sampling` — the denoising loop a step runs.
* :mod:`lmgendrive.config` — presets ``tiny``, ``demo``, ``paper``; the sampler settings are
  :class:`schemas.sampler.SamplerConfig`.
* :mod:`lmgendrive.train` — the stage losses (:mod:`~lmgendrive.train.losses`), stage freezing
  (:func:`~lmgendrive.train.stages.set_stage`) and the training loop.
* :mod:`lmgendrive.train.perception` — stage-1 detection targets from ego-frame objects, the
  batch and the loss.
"""
