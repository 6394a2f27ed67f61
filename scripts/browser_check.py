"""Open the Prefect and MLflow UIs of running services in headless Chromium and screenshot them.

Reads the services' client settings from DIR/pynomaly.env (written by `pynomaly services up`),
logs in (Prefect's API auth string, MLflow's basic auth), waits until the Prefect deployments
page lists the expected deployments and the MLflow model page shows the `champion` alias, and
saves one PNG per page. Exit code 0 when every page showed what it should, 1 otherwise.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package. Usage:
    python scripts/browser_check.py --env-file DIR/pynomaly.env --model breast-cancer
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ALIAS_CHIP = "@ champion"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
]


def read_env_file(path: Path) -> dict[str, str]:
    """`export KEY=VALUE` lines of a pynomaly.env file as a dict."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if sep:
            env[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return env


def basic_auth(user_and_password: str) -> str:
    """An HTTP Basic Authorization header value for 'user:password'."""
    return "Basic " + base64.b64encode(user_and_password.encode()).decode()


def get_json(url: str, authorization: str | None = None) -> Any:
    """GET a JSON document."""
    request = urllib.request.Request(url, headers={"Authorization": authorization or ""})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def new_driver(profile_dir: Path, chromium: str, chromedriver: str) -> Any:
    """A headless Chromium driven by the system chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def wait_for_text(driver: Any, needles: list[str], timeout: float) -> list[str]:
    """Wait until the page's visible text holds every needle; return the ones still missing."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    missing = list(needles)
    while time.monotonic() < deadline:
        try:
            text = driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # noqa: BLE001 - the page may be between renders
            text = ""
        missing = [n for n in needles if n not in text]
        if not missing:
            # Let late requests (tables, icons) settle before the screenshot.
            time.sleep(1.5)
            return []
        time.sleep(0.5)
    return missing


def check_prefect(driver: Any, env: dict[str, str], out: Path, timeout: float) -> dict[str, Any]:
    """The deployments page of the Prefect UI lists every deployment the API knows."""
    api_url = env["PREFECT_API_URL"].rstrip("/")
    ui_url = api_url.removesuffix("/api")
    auth = env.get("PREFECT_API_AUTH_STRING")
    header = basic_auth(auth) if auth else None
    result: dict[str, Any] = {"page": f"{ui_url}/deployments"}
    # The UI calls the API URL the server advertises; a wrong one shows an empty page.
    advertised = get_json(f"{ui_url}/ui-settings").get("api_url")
    if advertised and advertised.rstrip("/") != api_url:
        result["error"] = (
            f"the Prefect UI calls {advertised}, not {api_url}: start the server with "
            f"PREFECT_SERVER_UI_API_URL={api_url}"
        )
    request = urllib.request.Request(
        f"{api_url}/deployments/filter",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": header or ""},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        names = sorted(d["name"] for d in json.loads(resp.read()))
    result["expected"] = names
    if not names:
        result["error"] = "the Prefect API has no deployments: run `pynomaly deploy` first"
    # The UI keeps the API password in localStorage, base64-encoded, as its login form does.
    driver.get(f"{ui_url}/")
    if auth:
        driver.execute_script(
            "localStorage.setItem('prefect-password', arguments[0]);",
            base64.b64encode(auth.encode()).decode(),
        )
    driver.get(f"{ui_url}/deployments")
    missing = wait_for_text(driver, ["Deployments", *names], timeout)
    shot = out / "prefect-deployments.png"
    driver.save_screenshot(str(shot))
    result |= {"screenshot": str(shot), "missing": missing}
    result["ok"] = not missing and "error" not in result
    return result


def check_mlflow(
    driver: Any, env: dict[str, str], model: str, out: Path, timeout: float
) -> dict[str, Any]:
    """The registered-model page of the MLflow UI shows the model with its champion alias."""
    base = env["PYNOMALY_TRACKING_URI"].rstrip("/")
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        # Every request of the page (the app's API calls too) carries the credentials.
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders",
            {"headers": {"Authorization": basic_auth(f"{user}:{password}")}},
        )
    page = f"{base}/#/models/{model}"
    # Tall enough that the versions table (with the alias) shows below the model's tags.
    driver.set_window_size(1400, 1800)
    driver.get(page)
    # The alias chip of a version reads "@ champion" (tags such as champion_history do not).
    missing = wait_for_text(driver, [model, ALIAS_CHIP], timeout)
    shot = out / "mlflow-model.png"
    driver.save_screenshot(str(shot))
    return {"page": page, "screenshot": str(shot), "missing": missing, "ok": not missing}


def main(argv: list[str] | None = None) -> int:
    """Run both checks and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, required=True, help="DIR/pynomaly.env")
    parser.add_argument("--model", required=True, help="Registered model to look at in MLflow.")
    parser.add_argument("--out", type=Path, default=Path("browser-check"), help="PNG folder.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds per page.")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument(
        "--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver"
    )
    args = parser.parse_args(argv)

    env = read_env_file(args.env_file)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pynomaly-chromium-") as profile:
        driver = new_driver(Path(profile), args.chromium, args.chromedriver)
        try:
            checks = {
                "prefect": check_prefect(driver, env, args.out, args.timeout),
                "mlflow": check_mlflow(driver, env, args.model, args.out, args.timeout),
            }
        finally:
            driver.quit()
    ok = all(c["ok"] for c in checks.values())
    summary = {"ok": ok, "seconds": round(time.perf_counter() - started, 1), "checks": checks}
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
