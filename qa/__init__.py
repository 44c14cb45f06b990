"""Feature extractors, Fréchet distances, per-horizon statistics and reports.

Entry points: :func:`qa.run.plan` (work items of a job output), :class:`qa.extract.FeatureRunner`
(features of one work item) and :func:`qa.run.evaluate` (figures and report from the merged
statistics), all with a :class:`qa.config.QAConfig` (built by :func:`qa.config.qa_config` from a
job's ``qa`` section). The pipeline runs them: :func:`pipeline.qa_run.run_qa` and ``lmgd qa``
(:mod:`pipeline.qa_cli`). The protocol is written down in ``qa/PROTOCOL.md``.
"""
