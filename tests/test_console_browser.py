"""The console at ``/`` in a real browser against the running stack (docs/console.md).

`agentwatch up` with keys required; the simulator sends a live fleet of two tenants with
a CPU spike on one agent; Debian's chromium, driven by Playwright (never a browser
Playwright downloads: ``executable_path``), signs in with an operator's key of that
agent's tenant, sees the fleet summary, opens the agent from the search box with the
keyboard, and finds the chart against the baseline band (the spike outside it) and a
threat (the burst of errors) with its reason.
Every request to a host other than 127.0.0.1 is aborted and recorded: none may be tried
(the console works with the network off). An analyst's key of the other tenant sees
none of the first tenant's agents, and is offered no action.

Screenshots go to the test's temporary directory and, when ``CONSOLE_SCREENSHOTS_DIR``
is set, there too (``CONSOLE_SCREENSHOTS_DIR=docs/images`` refreshes the docs' images;
not an ``AGENTWATCH_`` name, which the root conftest.py removes from every test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import wait_until

# the fixtures `run_up` and `stack_env` come from the CLI tests
from tests.test_cli import FULL_STACK, PYTHON, run_up, stack_env  # noqa: F401

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),  # the stack, 40 min of history, two browser sessions
    pytest.mark.skipif(not FULL_STACK, reason="dataflows.heartbeats or api is missing"),
]

#: Debian's chromium (`make test` installs the package when it is missing).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: Where else the screenshots go, when set.
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS_DIR"
SPIKE_AGENT = "agent-000003"
#: Milliseconds the browser waits for an element or a page.
BROWSER_WAIT_MS = 30_000


def chromium() -> Path:
    """The browser, or a failure that says how to get it (never a skip: CI must notice)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the console's browser test needs Debian's chromium; "
            "`make test` installs it (apt-get install -y chromium), or install it yourself",
            pytrace=False,
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is missing: `make install` installs the dev extras", pytrace=False)
    return CHROMIUM


def save(page, name: str, tmp_path: Path, elsewhere: Path | None) -> Path:
    """A full-page screenshot in the test's directory (and a copy in ``elsewhere``)."""
    shot = tmp_path / "screenshots" / f"{name}.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    if elsewhere is not None:
        elsewhere.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, elsewhere / shot.name)
    return shot


def test_the_console_shows_the_live_fleet_an_agent_and_its_threat_offline_and_by_tenant(
    run_up, stack_env: dict[str, str], tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    browser_path = chromium()
    # (a relative directory is the one pytest was started in: each test runs elsewhere)
    wanted = os.environ.get(SCREENSHOTS_ENV)
    shots = pytestconfig.invocation_params.dir / wanted if wanted else None
    stack_env.update(
        AGENTWATCH_API_AUTH_REQUIRED="true",
        AGENTWATCH_BASELINE_WARMUP_S="0",
        AGENTWATCH_BASELINE_WARMUP_HEARTBEATS="20",
        AGENTWATCH_SNAPSHOT_INTERVAL_S="1",
    )
    base = f"http://127.0.0.1:{stack_env['AGENTWATCH_API_PORT']}"
    up = run_up()
    state = up.wait_ready(timeout_s=90)
    admin_key = (Path(stack_env["AGENTWATCH_VAR_DIR"]) / "run" / "admin.key").read_text().strip()
    admin = {"Authorization": f"Bearer {admin_key}"}

    # a live fleet: 40 min of history (a CPU spike 22 min in, a burst of errors 28 min in,
    # 5 min each), then real time
    with open(tmp_path / "simulate.out", "w") as out:
        simulator = subprocess.Popen(
            [
                PYTHON, "-m", "infra.cli", "simulate",
                *("--agents", "12", "--tenants", "2", "--backfill", "40m", "--quiet"),
                "--register",  # through the API (the stack's admin key): in the registry
                *("-i", f"cpu_spike:{SPIKE_AGENT}:22m:300"),
                *("-i", f"error_burst:{SPIKE_AGENT}:28m:300"),
                *("--ground-truth", str(tmp_path / "truth.jsonl")),
                *("--bootstrap-servers", state["broker"]["bootstrap_servers"]),
            ],
            env=stack_env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _check_in_the_browser(base, admin, browser_path, tmp_path, shots)
    finally:
        if simulator.poll() is None:
            os.killpg(simulator.pid, signal.SIGINT)
            try:
                simulator.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(simulator.pid, signal.SIGKILL)
                simulator.wait()
    assert up.interrupt() < 10


def _check_in_the_browser(
    base: str, admin: dict, browser_path: Path, tmp_path: Path, shots: Path | None
) -> None:
    from playwright.sync_api import expect, sync_playwright

    api = f"{base}/api/v1"

    def explained_threat() -> list[dict]:
        answer = httpx.get(f"{api}/agents/{SPIKE_AGENT}/threats", headers=admin, timeout=5)
        threats = answer.json()["threats"] if answer.status_code == 200 else []
        return [t for t in threats if t["evidence"]["condition"] and t["evidence"]["values"]]

    threat = wait_until(explained_threat, 90, f"a threat of {SPIKE_AGENT} with its reason")[0]

    # What the pages below show comes by other paths than the threat: the chart's heartbeats
    # (agents.metric_rows) and band (agents.baselines) through the loader, the registry
    # (agents.control, agents.state) through the API's projection. A threat can be visible
    # before the spike's heartbeats are: they are waited for here, so that the browser
    # checks the page, not the loader.
    def spike_stored() -> dict | None:
        path = f"{api}/agents/{SPIKE_AGENT}/series"
        answer = httpx.get(path, params={"limit": 500}, headers=admin, timeout=5)
        series = answer.json() if answer.status_code == 200 else {}
        band, points = series.get("band"), series.get("points", [])
        outside = [p for p in points if band and not band["low"] <= p["value"] <= band["high"]]
        return series if len(points) > 20 and len(outside) >= 5 else None

    wait_until(spike_stored, 60, f"the CPU spike of {SPIKE_AGENT} stored, outside its band")

    def registry() -> httpx.Response | None:
        answer = httpx.get(f"{api}/agents/search?limit=1000", headers=admin, timeout=5)
        return answer if answer.status_code == 200 and answer.json()["total"] >= 12 else None

    answer = wait_until(registry, 30, "the twelve agents in the registry")
    assert answer.json()["total"] == 12, answer.text
    tenants: dict[str, list[str]] = {}
    for agent in answer.json()["items"]:
        tenants.setdefault(agent["tenant_id"], []).append(agent["agent_id"])
    own = next(t for t, agents in tenants.items() if SPIKE_AGENT in agents)
    other = next(t for t in tenants if t != own)

    def key(role: str, tenant: str) -> str:
        made = httpx.post(
            f"{api}/keys", json={"role": role, "tenant_id": tenant, "name": "console test"},
            headers=admin, timeout=10,
        )  # fmt: skip
        assert made.status_code == 201, made.text
        return made.json()["token"]

    operator_key, analyst_key = key("operator", own), key("analyst", other)

    tried_elsewhere: list[str] = []
    page_errors: list[str] = []

    def only_this_machine(route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            tried_elsewhere.append(url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(browser_path), args=CHROMIUM_ARGS)
        try:
            # --- an operator of the spiking agent's tenant -------------------------------
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(BROWSER_WAIT_MS)
            context.route("**/*", only_this_machine)
            page = context.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(f"{base}/")
            expect(page.locator("#login")).to_be_visible()
            page.fill("#key", operator_key)
            page.keyboard.press("Enter")
            expect(page.locator("#fleet[data-loaded=true]")).to_be_visible()
            expect(page.locator("#who")).to_contain_text(f"operator of tenant {own}")
            agents_card = page.locator("#summary .card", has_text="Agents").locator(".value")
            expect(agents_card).to_have_text(str(len(tenants[own])))
            expect(page.locator("#tenants tbody")).to_contain_text(own)
            assert other not in page.locator("#tenants tbody").inner_text()
            expect(page.locator("#agents tbody .agent-link")).to_have_count(len(tenants[own]))
            save(page, "console-fleet", tmp_path, shots)

            # the keyboard: "/" to search, Enter opens the agent
            page.locator("body").press("/")
            expect(page.locator("#search")).to_be_focused()
            page.keyboard.type(SPIKE_AGENT)
            page.keyboard.press("Enter")
            expect(page).to_have_url(f"{base}/#/agents/{SPIKE_AGENT}")
            expect(page.locator("#agent[data-loaded=true]")).to_be_visible()
            chart = page.locator("#chart-svg svg")
            expect(chart.locator("polyline.line")).to_have_count(1)
            expect(chart.locator("rect.band")).to_have_count(1)
            assert int(page.locator("#chart").get_attribute("data-points")) > 20
            expect(page.locator("#chart-caption")).to_contain_text("outside the band")
            outside = int(page.locator("#chart").get_attribute("data-outside"))
            assert outside >= 5, f"the 5-minute CPU spike is outside the band ({outside})"
            threats = page.locator("#threats")
            expect(threats).to_contain_text(threat["rule"])
            expect(threats).to_contain_text("Why: " + threat["evidence"]["condition"])
            judged = next(iter(threat["evidence"]["values"]))
            expect(threats).to_contain_text(f"Judged: {judged} = ")
            if threat["evidence"]["baseline"]:  # a baseline rule: the metrics off it, too
                # newer threats may be listed above this one: any of the tables will do
                feature = threat["evidence"]["baseline"][0]["feature"]
                deviations = threats.locator("table.deviations").filter(has_text=feature)
                expect(deviations.first).to_be_visible()
            expect(page.locator("#actions")).to_be_visible()  # an operator may quarantine
            save(page, "console-agent", tmp_path, shots)

            page.keyboard.press("Escape")
            expect(page.locator("#fleet")).to_be_visible()
            expect(page).to_have_url(f"{base}/#/")
            context.close()

            # --- an analyst of the other tenant --------------------------------------------
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(BROWSER_WAIT_MS)
            context.route("**/*", only_this_machine)
            page = context.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(f"{base}/")
            page.fill("#key", analyst_key)
            page.keyboard.press("Enter")
            expect(page.locator("#fleet[data-loaded=true]")).to_be_visible()
            expect(page.locator("#who")).to_contain_text(f"analyst of tenant {other}")
            links = page.locator("#agents tbody .agent-link")
            expect(links).to_have_count(len(tenants[other]))
            listed = {link.get_attribute("href") for link in links.all()}
            assert listed == {f"#/agents/{agent}" for agent in tenants[other]}, listed
            assert own not in page.locator("#tenants tbody").inner_text()
            save(page, "console-other-tenant", tmp_path, shots)
            page.goto(f"{base}/#/agents/{SPIKE_AGENT}")  # typed in by hand: not found
            expect(page.locator("#status")).to_contain_text(f"Agent {SPIKE_AGENT}:")
            expect(page.locator("#chart-svg svg")).to_have_count(0)
            expect(page.locator("#threats li")).to_have_count(0)
            expect(page.locator("#actions")).to_be_hidden()
            page.goto(f"{base}/#/agents/%E0%A4%A")  # a link with a broken escape: no blank page
            expect(page.locator("#status")).to_contain_text("does not name an agent")
            expect(page.locator("#fleet")).to_be_visible()
            context.close()
        finally:
            browser.close()

    assert tried_elsewhere == [], f"the console tried to reach other hosts: {tried_elsewhere}"
    assert page_errors == [], f"the console's script failed: {page_errors}"


def test_without_chromium_the_browser_test_fails_saying_how_to_get_it(monkeypatch, tmp_path):
    """Never a skip: a CI machine without the browser must go red, not quietly green."""
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium()
