"""The alert rules proven by Prometheus's own promtool: syntax, and unit tests of every alert.

promtool comes with Debian's `prometheus` package (scripts/install-test-deps.sh, run by the
README's test command, installs it when missing); without
it these tests fail, they never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deployments" / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts_test.yml"


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    """Run promtool; a missing binary is a failure naming the package to install."""
    binary = shutil.which("promtool")
    assert binary, (
        "promtool not found: install Debian's prometheus package (run scripts/install-test-deps.sh)"
    )
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def alert_names() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout + result.stderr


def test_promtool_check_scrape_config() -> None:
    """The shipped prometheus.yml parses and its rule file (alerts.yml) loads."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_promtool_rule_unit_tests_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness is not vacuous: one expected label changed makes promtool fail."""
    text = RULE_TESTS.read_text()
    assert text.count("model: gamma") == 1
    (tmp_path / RULES.name).write_text(RULES.read_text())
    (tmp_path / RULE_TESTS.name).write_text(text.replace("model: gamma", "model: alpha"))
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAILED" in output and "PynomalyModelWithoutChampion" in output, output


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """A new alert in alerts.yml without cases in alerts_test.yml fails here."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    assert doc["rule_files"] == [RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test["alert_rule_test"]:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alert_names())
    assert len(names) == len(alert_names()) >= 6
    assert names - firing == set(), "alerts without a case where they fire"
    assert names - quiet == set(), "alerts without a case where they stay quiet"
    assert (firing | quiet) - names == set(), "cases of alerts that alerts.yml does not define"
