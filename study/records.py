"""The MLflow record that running, reporting and verifying share: how its runs are read."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


RUNS_PER_PAGE = 1000  # the most MLflow's stores return at once


def every_run(client: MlflowClient, experiments: list[str], query: str = "",
              order_by: list[str] | None = None) -> Iterator[Run]:
    """Every run of `experiments` matching `query`, page after page (MLflow hands out at most a page a call)."""
    token = None
    while experiments:
        page = client.search_runs(experiments, query, order_by=order_by, max_results=RUNS_PER_PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return
