"""The study orchestrator. A package with a `__main__.py` is a command (`python -m study.run`, `study.report`,
`study.reproduce`, `study.evaluate`); every other module is a part (docs/architecture.md has the map)."""
