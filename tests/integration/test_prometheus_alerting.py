"""A real Prometheus scrapes `pynomaly metrics serve` on loopback and an alert fires.

The exporter reads a results DB in which one model flagged 40 % of the rows it scored in the
last day; Prometheus (Debian's `prometheus` package, from scripts/install-test-deps.sh) evaluates
the rules of deployments/monitoring/alerts.yml over what it scraped, and
PynomalyAnomalyShareHigh fires for that model alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from deployments.local.servers import free_port
from tasks.results import replace_batch, results_engine

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[2] / "deployments" / "monitoring"
# alerts.yml waits 5-30 minutes before an alert fires; the copy Prometheus loads here keeps
# every rule expression, label and annotation as they are and only shortens `for:` to this,
# so the test waits seconds. Longer than two scrapes: an alert that is briefly true at start
# (absent(up) before the first scrape) only goes pending.
SHORT_FOR = "5s"
DEADLINE_S = 90.0


def _write_results(home: Path) -> None:
    """Two models' scoring as the score flow writes it, in the embedded results DB."""
    home.mkdir(parents=True)
    engine = results_engine(f"sqlite:///{home / 'results.db'}")
    now = datetime.now(UTC)

    def batch(batch_id: str, model: str, rows: int, flagged: int, at: datetime) -> None:
        frame = pd.DataFrame(
            {
                "row_index": range(rows),
                "score": [1.0] * flagged + [0.0] * (rows - flagged),
                "is_anomaly": [True] * flagged + [False] * (rows - flagged),
            }
        )
        replace_batch(engine, batch_id, [frame], model_name=model, model_version=1, scored_at=at)

    try:
        # surge: 2 % of a batch three days ago, 40 % of today's 200 rows.
        batch("b-old", "surge", 2000, 40, now - timedelta(days=3))
        batch("b-today", "surge", 200, 80, now - timedelta(hours=1))
        # steady: 3 % both times.
        batch("b-old", "steady", 1000, 30, now - timedelta(days=3))
        batch("b-today", "steady", 300, 9, now - timedelta(hours=1))
    finally:
        engine.dispose()


def _rules_with_short_for(dest: Path) -> list[str]:
    """alerts.yml with every `for:` set to SHORT_FOR; returns the alert names."""
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    names = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = SHORT_FOR
            names.append(rule["alert"])
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return names


def _prometheus_config(dest: Path, exporter: str, rules: Path) -> None:
    """The shipped prometheus.yml aimed at the test exporter, scraping and evaluating every 1 s."""
    doc = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    doc["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    doc["rule_files"] = [str(rules)]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "pynomaly"]
    job["static_configs"] = [{"targets": [exporter]}]
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))


@contextmanager
def _process(args: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen]:
    """A child process with its output in `log`, always stopped (SIGTERM, then SIGKILL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)


def _logs(*logs: Path) -> str:
    return "\n".join(f"--- {p.name} (tail)\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _api(base: str, path: str) -> Any:
    body = json.loads(_get(f"{base}{path}"))
    assert body["status"] == "success", body
    return body["data"]


def _wait_for(
    what: str, probe: Callable[[], Any], procs: list[subprocess.Popen], logs: list[Path]
) -> Any:
    """Poll `probe` until it returns something truthy; fail on the deadline or a dead process."""
    deadline = time.monotonic() + DEADLINE_S
    last: Any = None
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[0]} exited while waiting for {what}\n" + _logs(
                *logs
            )
        try:
            last = probe()
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"no {what} within {DEADLINE_S:.0f} s (last: {last!r})\n" + _logs(*logs))


def test_prometheus_fires_anomaly_share_alert_from_the_exporter(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus: install Debian's prometheus (scripts/install-test-deps.sh)"
    home = tmp_path / "home"
    _write_results(home)
    rules = tmp_path / "alerts.yml"
    alert_names = _rules_with_short_for(rules)
    assert "PynomalyAnomalyShareHigh" in alert_names

    exporter_port, prometheus_port = free_port(), free_port()
    exporter = f"127.0.0.1:{exporter_port}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    config = tmp_path / "prometheus.yml"
    _prometheus_config(config, exporter, rules)
    check = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYNOMALY_", "MLFLOW_"))}
    env["PYNOMALY_HOME"] = str(home)  # results.db there; no MLflow DB and no backup yet
    exporter_log, prometheus_log = tmp_path / "exporter.log", tmp_path / "prometheus.log"
    logs = [exporter_log, prometheus_log]
    serve = [sys.executable, "-m", "deployments.cli", "metrics", "serve", "--host", "127.0.0.1"]
    with _process(
        [*serve, "--port", str(exporter_port)], exporter_log, env=env, cwd=tmp_path
    ) as ep:
        # The first scrape imports the readers (MLflow among them): done here, not under
        # Prometheus's 1 s scrape timeout.
        text = _wait_for(
            "exporter answering", lambda: _get(f"http://{exporter}/metrics"), [ep], logs
        ).decode()
        assert 'pynomaly_anomaly_share_24h{model="surge"} 0.4' in text, text

        with _process(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            prometheus_log,
            cwd=tmp_path,
        ) as pp:
            procs = [ep, pp]

            _wait_for("Prometheus ready", lambda: _get(f"{prometheus}/-/ready"), procs, logs)

            def target_up() -> dict | None:
                targets = _api(prometheus, "/api/v1/targets")["activeTargets"]
                assert [t["labels"]["job"] for t in targets] in ([], ["pynomaly"]), targets
                return targets[0] if targets and targets[0]["health"] == "up" else None

            target = _wait_for("target up", target_up, procs, logs)
            assert target["labels"]["instance"] == exporter
            assert target["lastError"] == ""

            def alerts() -> list[dict]:
                return _api(prometheus, "/api/v1/alerts")["alerts"]

            def share_alert_firing() -> list[dict]:
                return [
                    a
                    for a in alerts()
                    if a["labels"]["alertname"] == "PynomalyAnomalyShareHigh"
                    and a["state"] == "firing"
                ]

            firing = _wait_for("PynomalyAnomalyShareHigh firing", share_alert_firing, procs, logs)
            assert [a["labels"] for a in firing] == [
                {
                    "alertname": "PynomalyAnomalyShareHigh",
                    "severity": "warning",
                    "job": "pynomaly",
                    "instance": exporter,
                    "model": "surge",
                }
            ]
            assert float(firing[0]["value"]) == pytest.approx(0.4)
            assert firing[0]["annotations"]["summary"] == (
                "Anomaly share of surge over the last day is unusually high"
            )
            assert firing[0]["annotations"]["description"].startswith("40% of the rows scored")

            # The rest of the platform's state, as the exporter reports it, holds exactly these
            # alerts: nothing trained (the registry cannot be read) and no backup taken. The
            # steady model, the exporter itself and the scoring schedule raise none.
            expected = {
                ("PynomalyAnomalyShareHigh", "surge"),
                ("PynomalySourceUnreachable", "registry"),
                ("PynomalyBackupStale", None),
            }

            def firing_set() -> set[tuple[str, str | None]]:
                return {
                    (a["labels"]["alertname"], a["labels"].get("model", a["labels"].get("source")))
                    for a in alerts()
                    if a["state"] == "firing"
                }

            _wait_for(
                "the expected set of firing alerts", lambda: firing_set() >= expected, procs, logs
            )
            assert firing_set() == expected
            assert not [a for a in alerts() if a["labels"].get("model") == "steady"]
