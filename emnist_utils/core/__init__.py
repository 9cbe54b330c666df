"""The core: data, models, training, evaluation, plots and reporting, independent of any experiment.

Modules (one job each): paths, data, splits, models, variants, registry, augment, training, evaluation,
trained_model, fingerprint, plots, reporting.
"""
