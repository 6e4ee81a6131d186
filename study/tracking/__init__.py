"""The MLflow side of a study: the store, the writes, the cache of finished runs, the Tune callback."""
import os

from study.moved import moved_attribute

# MLflow draws a progress bar for every artifact it downloads (a cached run's code diff, a report's files): noise in a
# terminal that prints one line per event; a user who wants it sets the variable
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def __getattr__(name: str):
    # study.tracking was one module before it became this package: Tuner.restore may ask for its old names
    return moved_attribute(__name__, name)
