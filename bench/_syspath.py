"""Imported first by bench scripts that use the project's ``pipeline`` package.

``python bench/X.py`` puts ``bench/`` first on ``sys.path``, where ``bench/pipeline.py`` and
``bench/qa.py`` would shadow those packages; this drops ``bench/`` from the path again.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
