"""The MLflow side of a study: the store, the writes, the cache of finished runs, the Tune callback."""
from study.moved import moved_attribute


def __getattr__(name: str):
    # study.tracking was one module before it became this package: Tuner.restore may ask for its old names
    return moved_attribute(__name__, name)
