"""A run's output folder: schemas, part files, finalize, COCO forms, metrics of a run.

``folder`` (layout and job identity) → ``schema`` → ``parts`` (commit, merge, compact) →
``finalize`` (final tables) → ``coco`` and ``run_metrics`` (derived from the tables).
"""
