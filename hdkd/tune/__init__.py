"""Optuna tuning of both students alike: the search space, the storage, the workers, the report and the
stage (`hdkd.tune.stage`); `hdkd.tune.best` reads and writes the tuned settings without importing Optuna."""
