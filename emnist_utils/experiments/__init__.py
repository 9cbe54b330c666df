"""The experiments: run specs and their store, the report's trial tables, the studies beyond them, the
scikit-learn baselines, profiles, and running many runs at once with a plan and a progress display."""
