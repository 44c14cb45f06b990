"""The stages the executor runs, set up once per actor: generation units (generator.py) and QA
features (qa.py)."""
