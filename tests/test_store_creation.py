"""Studies launched at once into a store not made yet: one makes it, the others wait for it (MLflow's migrations,
run twice at once on one sqlite file, failed one of them: "table latest_metrics already exists")."""
import subprocess
import sys

import pytest

from tests.studies import loopback_env

LAUNCHES = 4


@pytest.mark.slow  # real processes
def test_launches_at_once_on_a_fresh_store_all_open_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    probe = (f"from study.tracking.store import open_store; import sys; "
             f"open_store({uri!r}, 'study' + sys.argv[1]); print('ok')")
    launched = [subprocess.Popen([sys.executable, "-c", probe, str(i)], cwd=tmp_path, env=loopback_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(LAUNCHES)]
    outcomes = [p.communicate(timeout=180) for p in launched]
    assert [out.strip() for out, _ in outcomes] == ["ok"] * LAUNCHES, [err[-800:] for _, err in outcomes]
