"""What the command-line programs do, as plain functions of typed configs (usable from a notebook):
:mod:`scoresde.jobs.sample` (``sample.py``), :mod:`scoresde.jobs.likelihood` (``likelihood.py``),
:mod:`scoresde.jobs.classifier` (``train_classifier.py``); training is :func:`scoresde.training.train`."""
