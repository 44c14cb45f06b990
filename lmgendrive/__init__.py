"""The LMGenDrive network and its training recipe; knows nothing of Ray, shards or S3.

Entry points (import the submodules; this package import stays light):

* :func:`lmgendrive.checkpoint.load_checkpoint` / :func:`~lmgendrive.checkpoint.save_checkpoint` /
  :func:`~lmgendrive.checkpoint.model_identity` — checkpoints and the id + sha256 for metadata.
* :class:`lmgendrive.model.LMGenDrive` — ``rollout`` / ``start`` + ``step`` (offline generation),
  ``plan`` (online planning), the stage losses and ``set_stage``.
* :mod:`lmgendrive.config` — presets ``tiny``, ``demo``, ``paper`` and the sampler settings.
* :func:`lmgendrive.vision.build_bev_targets` — stage-1 detection targets from ego-frame objects.
"""
