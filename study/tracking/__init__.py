"""The MLflow side of a study: the store, the writes, the cache of finished runs, the Tune callback."""
