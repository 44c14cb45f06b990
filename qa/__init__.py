"""Feature extractors, Fréchet distances, per-horizon statistics and reports.

Entry points: :func:`qa.run.run_qa` with a :class:`qa.config.QAConfig` (built by
:func:`qa.config.qa_config` from a job's ``qa`` section), and ``lmgd qa`` (:mod:`qa.cli`). The
protocol is written down in ``qa/PROTOCOL.md``.
"""
