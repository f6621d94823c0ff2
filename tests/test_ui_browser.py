"""An operator's path through Prefect's own UI, in headless Chromium.

A real `prefect server start` (its UI: prefect_test_harness serves none) and `reinstate
serve` in child processes, a seeded platform database, and a browser doing what the
operator guide says: the incident's Custom run form (a bad faulty version refused, then the
right values), Resume in the suspended run's menu with the approval form, the run's
Artifacts tab, the review list, the review-case form, and the report that changed.

Screenshots of every step go to REINSTATE_SCREENSHOTS_DIR (docs/ui/ with `make
ui-screenshots`), else to the test's tmp_path. Without Chromium or Playwright the test
skips with the reason, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import contextvars
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from reinstatement.markdown import WORD_JOINER
from reinstatement.models import Case
from reinstatement.seed import (
    INCIDENT_FAULTY,
    INCIDENT_KEY,
    SeedOptions,
    seed,
)
from tasks.artifacts import artifact_key
from tasks.review_list import review_page_key
from tests.test_deployments import PROJECT_ROOT, Server, _run_logs, _wait_for_state
from tests.test_run_artifacts import review_rows

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# A flow run's page draws its graph with WebGL, here in software (no GPU): the browser's
# CPU in the main browser test was 111 s with it and 45 s without, on a quiet machine, and
# the suite is bound by the machine's CPU. No test reads the graph; the screenshots taken
# for docs/ui/ (`make ui-screenshots`) keep it, as an operator sees it.
if not os.environ.get("REINSTATE_SCREENSHOTS_DIR"):
    CHROMIUM_ARGS += ["--disable-3d-apis", "--disable-webgl"]
BATCH_SIZE = 10  # several batches per step, so the progress bars move through values
UI_TIMEOUT_MS = 30_000


def _chromium() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def _require_browser() -> str:
    """Chromium's path; a skip (a failure under CI=true) saying what is missing."""
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        problem = f"playwright cannot be imported ({exc}): pip install -e '.[dev]'"
    chromium = _chromium()
    if problem is None and chromium is None:
        problem = ("no Chromium at /usr/bin/chromium or on PATH: apt-get install chromium "
                   "(checks/debian_package.sh, run by make test)")
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem} (CI=true: the browser test must run)")
        pytest.skip(problem)
    assert chromium is not None
    return chromium


def fill_decision(page: Any, decision: str, operator: str, note: str) -> Any:
    """The Resume dialog (open once Resume in the run's menu was clicked) filled in; the
    dialog, for its Resume button."""
    from playwright.sync_api import expect

    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Resume Flow Run")).to_be_visible()
    dialog.get_by_role("button", name="Select Decision").click()
    page.get_by_role("option", name=decision, exact=True).click()
    dialog.get_by_label("Operator").fill(operator)
    dialog.get_by_label("Note").fill(note)
    return dialog


@pytest.fixture
def chromium() -> str:
    """Checked first, before any server starts."""
    return _require_browser()


@pytest.fixture
def served(real_prefect_api: str, cli_env: dict[str, str], tmp_path: Path
           ) -> Iterator[Server]:
    # Logging at INFO: the run's Logs tab, in the screenshots, tells where Resume is.
    env = {**os.environ, "PREFECT_API_URL": real_prefect_api, "REINSTATE_EMAIL_BACKEND": "file",
           **cli_env}
    with Server.running(env, tmp_path / "serve.log") as server:
        yield server


@contextmanager
def operator_browser(chromium: str, shots: Path) -> Iterator[Any]:
    """A page of headless Chromium as an operator's (1400 by 1000, UTC); on a failure, the
    page as it was goes to `shots` (99-failure.png and .html)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                      timezone_id="UTC")
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        try:
            yield page
        except Exception:
            with suppress(Exception):
                page.screenshot(path=str(shots / "99-failure.png"), full_page=True)
                (shots / "99-failure.html").write_text(page.content())
            raise
        finally:
            context.close()
            browser.close()


class ProgressWatcher:
    """Polls the progress artifacts while runs go on, keeping every value it sees.

    `update_progress_artifact` changes an artifact in place (only a new create makes a
    version), so the values in between are seen only by looking while they are current.
    """

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}
        self._stop = threading.Event()
        # The thread runs in a copy of this context: it holds the test's PREFECT_API_URL.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._poll,), daemon=True)

    def _poll(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        last: dict[Any, float] = {}
        with get_client(sync_client=True) as client:
            while not self._stop.is_set():
                with suppress(Exception):  # a busy server: the next poll sees it again
                    for artifact in client.read_artifacts(artifact_filter=ArtifactFilter(
                            key=ArtifactFilterKey(like_="progress-"))):
                        # Every version of a key (a rerun creates one) is followed apart.
                        value = float(artifact.data)  # type: ignore[arg-type]
                        if last.get(artifact.id) != value:
                            last[artifact.id] = value
                            self.seen.setdefault(str(artifact.key), []).append(value)
                self._stop.wait(0.04)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _artifacts(key: str) -> list[Any]:
    """Every version of the artifact `key`, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return list(client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC))


def _deployment_runs(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        return list(client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment.id]))))


def _wait_for_new_run(name: str, known: set[Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [run for run in _deployment_runs(name) if run.id not in known]
        if new:
            (run,) = new
            return run
        time.sleep(0.3)
    raise AssertionError(f"no run of {name} was created")


def _in_review(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(Case.id).where(Case.state == "review")
                                 .order_by(Case.id)).scalars())


def _state_name(flow_run_id: Any) -> str | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return None if state is None else state.name


def _resume_until_taken(page: Any, dialog: Any, flow_run_id: Any, attempts: int = 3,
                        wait_s: float = 90) -> list[str]:
    """Click the dialog's Resume until the server has taken the decision; the error toasts seen.

    The form first validates the input on the server, then posts the resume. On a busy
    machine either request can fail: the UI shows an error toast ("Failed to validate input",
    or the server's message) and keeps the dialog open, and the operator clicks Resume again.
    The decision is taken when the run is no longer Suspended (read through the API: the
    dialog may close later than that, or, after a lost answer, not at all). A click that
    neither moves the run nor shows an error within `wait_s` is tried again too; three
    attempts without the run moving fail with the dialog's text and the toasts seen."""
    errors: list[str] = []
    toasts = page.locator("[data-sonner-toast][data-type='error']")
    for _ in range(attempts):
        with suppress(Exception):  # an earlier attempt's toast gone before the next click
            toasts.first.wait_for(state="detached", timeout=10_000)
        dialog.get_by_role("button", name="Resume", exact=True).click()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _state_name(flow_run_id) != "Suspended":
                return errors
            if toasts.count():
                errors.extend(toasts.all_inner_texts())
                break
            page.wait_for_timeout(500)
        if not dialog.is_visible():
            # The dialog closed (the UI saw its resume succeed) but the run stays Suspended.
            raise AssertionError(f"the dialog closed and the run is still Suspended; "
                                 f"error toasts: {errors}")
    raise AssertionError(f"Resume was not taken after {attempts} clicks; error toasts: "
                         f"{errors}; the dialog: {dialog.inner_text()!r}")


def submit_until_created(page: Any) -> None:
    """Submit until the form asks the server for the run; see "... scheduled to start now".

    The form validates the values on the server (/ui/schemas/validate), then asks for
    the run (/deployments/{id}/create_flow_run). After a refusal its first Submit only
    validates again (and clears the message): no run is asked for, and the operator
    clicks again. Submit is clicked again only once a validation has come back and no
    run was asked for within 3 s of it, never while a request may still be on its way
    (on a busy server each takes seconds), so the test never makes two runs. A 503
    (Prefect's server found its database busy and kept nothing) is what an operator
    meets on a busy server too: they submit again, and so does the test, twice at most."""
    from playwright.sync_api import expect

    validated: list[float] = []
    asked: list[str] = []
    answers: list[str] = []

    def creates(request: Any) -> bool:
        return bool(request.method == "POST" and request.url.endswith("/create_flow_run"))

    def finished(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/ui/schemas/validate"):
            validated.append(time.monotonic())

    def sent(request: Any) -> None:
        if creates(request):
            asked.append(request.url)

    def answered(response: Any) -> None:
        if creates(response.request):
            answers.append(f"HTTP {response.status}")

    def failed(request: Any) -> None:
        if creates(request):
            answers.append(f"failed: {request.failure}")

    page.on("requestfinished", finished)
    page.on("request", sent)
    page.on("response", answered)
    page.on("requestfailed", failed)
    toast = page.get_by_text("scheduled to start now")
    try:
        for attempt in range(3):
            asked.clear()
            answers.clear()
            for _ in range(2):
                validated.clear()
                page.get_by_role("button", name="Submit").click()
                deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
                while not asked and time.monotonic() < deadline and not (
                        validated and time.monotonic() - validated[-1] > 3):
                    page.wait_for_timeout(200)
                if asked:
                    break
            assert len(asked) == 1, f"Submit asked for {len(asked)} run(s)"
            # The toast follows the server's answer, which a busy server gives late
            # (the suite's other workers share its two cores, and the served flows
            # write to the same Prefect database): the answer is awaited for up to
            # five minutes, and the toast must then follow it.
            deadline = time.monotonic() + 300
            while not answers and not toast.count() and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert answers or toast.count(), "the server did not answer the run's creation"
            if answers[:1] != ["HTTP 503"] or attempt == 2:
                break
            page.wait_for_timeout(1000)
        assert not answers or answers[0].startswith("HTTP 2"), (
            f"the server refused the run's creation: {answers}")
        expect(toast).to_be_visible()
    finally:
        page.remove_listener("requestfinished", finished)
        page.remove_listener("request", sent)
        page.remove_listener("response", answered)
        page.remove_listener("requestfailed", failed)


def test_operator_runs_approves_and_reviews_an_incident_in_the_prefect_ui(
    chromium: str, served: Server, prefect_server: str, engine: Engine, shots: Path
) -> None:
    from playwright.sync_api import Page, expect
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    expect.set_options(timeout=UI_TIMEOUT_MS)

    seed(engine, SeedOptions(accounts=300, seed=8))
    # The form's dates are left empty (None): no window, so bans by the faulty versions
    # outside INCIDENT_SINCE..INCIDENT_UNTIL are candidates too; the run must still complete.
    ui = f"{prefect_server}/v2"
    incident_deployment = "reinstate-incident/reinstate-incident"
    review_deployment = "review-case/review-case"

    def shot(page: Page, name: str) -> None:
        page.wait_for_timeout(400)  # let toasts and transitions settle
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    def open_custom_run(page: Page, deployment: str) -> None:
        page.goto(f"{ui}/deployments")
        # The list re-renders as its activity refreshes; a click that lands in one is lost
        # (seen on a busy machine): click until the deployment's own page opens.
        for attempt in range(3):
            page.get_by_role("link", name=deployment, exact=True).first.click()
            try:
                page.wait_for_url(re.compile(r"/deployments/deployment/"), timeout=15_000)
                break
            except PlaywrightTimeoutError:
                if attempt == 2:
                    raise
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run").click()
        expect(page.get_by_role("button", name="Submit")).to_be_visible()

    def open_latest_version(page: Page, key: str) -> None:
        """The key's page (/artifacts/key/KEY: its versions, newest first), then the
        newest version's short id."""
        page.goto(f"{ui}/artifacts/key/{key}")
        page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
        page.wait_for_url(re.compile(r"/artifacts/artifact/"))

    with operator_browser(chromium, shots) as page:
        # 1. The incident's Custom run form: a faulty version without @version is
        # refused before any run exists.
        open_custom_run(page, "reinstate-incident")
        page.get_by_label("Incident key").fill(INCIDENT_KEY)
        page.get_by_label("Declared by").fill("dev-declarer")
        faulty = page.get_by_role("group").filter(
            has=page.get_by_role("button", name="Add item"))
        page.get_by_role("button", name="Add item").click()
        faulty.get_by_role("textbox").last.fill("spam_burst")
        page.get_by_label("Batch size").fill(str(BATCH_SIZE))
        shot(page, "01-incident-form")
        runs_before = {run.id for run in _deployment_runs(incident_deployment)}
        page.get_by_role("button", name="Submit").click()
        refusal = page.get_by_text(re.compile(r"^'spam_burst' does not match"))
        expect(refusal).to_be_visible()
        expect(page.get_by_text(
            "Validation failed for field 'request.faulty_versions[0]'")).to_be_visible()
        shot(page, "02-incident-form-refused")
        page.wait_for_timeout(1000)
        assert {run.id for run in _deployment_runs(incident_deployment)} == runs_before

        # 2. The right values, dates left empty (None), approval on by default.
        faulty.get_by_role("textbox").last.fill(INCIDENT_FAULTY[0])
        for version in INCIDENT_FAULTY[1:]:
            page.get_by_role("button", name="Add item").click()
            faulty.get_by_role("textbox").last.fill(version)
        # (The refusal stays under the item until the form is submitted again.)
        shot(page, "03-incident-form-filled")
        with ProgressWatcher() as progress:
            submit_until_created(page)
            flow_run = _wait_for_new_run(incident_deployment, runs_before)
            assert flow_run.parameters["request"]["faulty_versions"] == list(
                INCIDENT_FAULTY)
            assert flow_run.parameters["request"]["since"] is None
            assert flow_run.parameters["request"]["require_approval"] is True
            assert flow_run.parameters["request"]["batch_size"] == BATCH_SIZE

            # 3. Suspended for approval; Resume in the run's menu, the form, approve.
            _wait_for_state(flow_run.id, "Suspended", timeout=120)
            page.goto(f"{ui}/runs/flow-run/{flow_run.id}")
            expect(page.get_by_text("Suspended").first).to_be_visible()
            # The run's log says where the decision is made (read through the
            # API: logs arrive a moment after the state); the Logs tab, newest first.
            assert any("(Resume, in the run's menu)" in line for line in _run_logs(
                flow_run.id, until_seen="(Resume, in the run's menu)"))
            page.reload()
            page.get_by_text("Oldest to newest").click()
            page.get_by_role("option", name="Newest to oldest").click()
            shot(page, "04-run-suspended")
            page.get_by_role("button", name="Open menu").first.click()
            expect(page.get_by_role("menuitem", name="Resume")).to_be_visible()
            shot(page, "05-run-menu-resume")
            page.get_by_role("menuitem", name="Resume").click()
            dialog = fill_decision(page, "approve", "ops-oncall", "preview checked")
            shot(page, "06-resume-form")
            # The first resume request is lost on its way (as on a busy server): the UI
            # shows an error toast, the run stays Suspended, and Resume again takes the
            # decision.
            lost: list[str] = []

            def lose_the_first(route: Any) -> None:
                if lost:
                    route.continue_()
                else:
                    lost.append(route.request.url)
                    route.abort("connectionreset")

            resume_url = re.compile(r"/api/flow_runs/[0-9a-f-]+/resume$")
            page.route(resume_url, lose_the_first)
            errors = _resume_until_taken(page, dialog, flow_run.id)
            page.unroute(resume_url)
            assert len(lost) == 1 and errors, (lost, errors)
            run = _wait_for_state(flow_run.id, "COMPLETED", timeout=150)
        assert run.state.is_completed()

        # 4. The progress bars reached 100% through values in between.
        restore_key = artifact_key(INCIDENT_KEY, "progress-restore")
        verify_key = artifact_key(INCIDENT_KEY, "progress-verify")
        for key in (restore_key, verify_key):
            assert any(0 < value < 100 for value in progress.seen.get(key, [])), (
                key, progress.seen)
            assert 100.0 in progress.seen[key], (key, progress.seen)
        (restore,) = _artifacts(restore_key)
        assert restore.data == 100.0
        assert restore.description.startswith("restore: ") and restore.description.endswith(
            " done")
        assert any(v.data == 100.0 for v in _artifacts(verify_key))
        page.goto(f"{ui}/runs/flow-run/{flow_run.id}")
        expect(page.get_by_text("Completed").first).to_be_visible()
        page.get_by_role("tab", name="Artifacts").click()
        expect(page.get_by_text(restore_key).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"^restore: [\d,]+ of [\d,]+ done$"))
               ).to_be_visible()
        shot(page, "07-run-artifacts")

        # 5. The review list (the run's Artifacts tab, its review card: page 1), a case
        # id read off the page with its whole reason, the review-case form, the case
        # gone from the republished list (the key's page, newest version) and the
        # report changed.
        review_key = review_page_key(INCIDENT_KEY, 1)
        report_key = artifact_key(INCIDENT_KEY, "report")
        report_before = _artifacts(report_key)[0].data
        listed = review_rows(str(_artifacts(review_key)[0].data))
        waiting_before = [row["case id"] for row in listed]
        assert waiting_before and waiting_before == _in_review(engine)
        # The card opens that artifact's own page (/artifacts/artifact/ID), the list:
        # a markdown table, whose cells wrap (a table artifact's cells are cut off).
        page.get_by_role("link", name=re.compile(rf"\b{review_key}")).first.click()
        page.wait_for_url(re.compile(r"/artifacts/artifact/"))
        table = page.get_by_role("table")
        # (The markdown is drawn again once loaded: wait for the table's final form.)
        expect(table.get_by_role("columnheader")).to_have_text(
            ["case id", "account", "reason"])
        expect(table.get_by_role("row")).to_have_count(len(listed) + 1)
        first_row = table.get_by_role("row").nth(1).get_by_role("cell")
        case_id = int(first_row.first.inner_text().strip())
        assert case_id == waiting_before[0]
        reason = first_row.nth(2)
        assert reason.inner_text().strip().replace(WORD_JOINER, "") == listed[0]["reason"]
        assert reason.evaluate("cell => cell.scrollWidth <= cell.clientWidth")
        shot(page, "08-review-table")

        reviews_before = {r.id for r in _deployment_runs(review_deployment)}
        open_custom_run(page, "review-case")
        # This form's labels are the parameter names (the Field titles do not reach
        # the deployment's schema); the descriptions are shown under them.
        page.get_by_label("case_id", exact=True).fill(str(case_id))
        page.get_by_role("button", name="Select decision").click()
        page.get_by_role("option", name="reinstate", exact=True).click()
        page.get_by_label("reviewer", exact=True).fill("ana")
        page.get_by_label("note", exact=True).fill("the signal was missing, not high")
        shot(page, "09-review-form")
        submit_until_created(page)
        review = _wait_for_new_run(review_deployment, reviews_before)
        review = _wait_for_state(review.id, "COMPLETED", timeout=120)
        assert review.name == f"review case {case_id} ({INCIDENT_KEY})"

        waiting_after = [row["case id"] for row in review_rows(
            str(_artifacts(review_key)[0].data))]
        assert waiting_after == waiting_before[1:]
        open_latest_version(page, review_key)
        expect(page.get_by_role("table")).to_be_visible()
        cells = page.get_by_role("table").get_by_role("row").all_inner_texts()
        assert not any(re.match(rf"^{case_id}\s", row) for row in cells[1:]), cells
        shot(page, "10-review-table-after")
        report_after = _artifacts(report_key)[0].data
        assert report_after != report_before
        open_latest_version(page, report_key)
        expect(page.get_by_role("heading", name=re.compile("Reinstatement report"))
               ).to_be_visible()
        shot(page, "11-report-updated")

    with engine.connect() as conn:
        restored = conn.execute(select(func.count()).select_from(Case).where(
            Case.state == "restored")).scalar_one()
    assert restored > 0
    assert case_id not in _in_review(engine)
    assert (PROJECT_ROOT / "docs" / "ui").is_dir()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def until_laid_out(page: Any, cell: Any, judged: str, failure: str) -> None:
    """Until `judged` (a function of the cell, in the page) holds of the cell found by
    `cell` (a locator, found again at each look: the UI may draw a table anew after its
    first layout), for up to UI_TIMEOUT_MS; else fails with what the cell measured."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        try:
            if cell.evaluate(judged, timeout=5_000):
                return
        except Exception:  # noqa: BLE001 - the cell drawn anew between finding and judging
            pass
        if time.monotonic() > deadline:
            raise AssertionError(failure + ": " + str(cell.evaluate(
                """cell => ({scroll: cell.scrollWidth, client: cell.clientWidth,
                    height: cell.getBoundingClientRect().height,
                    right: cell.getBoundingClientRect().right,
                    window: document.documentElement.clientWidth})""")))
        page.wait_for_timeout(250)


def test_the_review_list_reads_whole_in_the_ui_and_its_pages_link(
    chromium: str, real_prefect_api: str, prefect_server: str, engine: Engine,
    cli_env: dict[str, str], shots: Path,
) -> None:
    """In Prefect's UI a page of the review list shows each reason whole, wrapped in its
    cell (the same reason in a table artifact's cell is cut to one line), and its links
    open the other pages of the same list."""
    from playwright.sync_api import expect, sync_playwright
    from prefect import flow
    from prefect.artifacts import create_table_artifact

    from reinstatement.audit import trail
    from reinstatement.incidents import load_incident
    from tasks.artifacts import artifact_key
    from tasks.reporting import publish_report
    from tasks.review_list import publish_review_queue
    from tests.test_run_artifacts import latest, waiting_for_review

    key = "INC-REVIEW-PAGES"
    expected = waiting_for_review(engine, key, 12)

    @flow
    def publish() -> None:
        publish_report(key)  # with the incident's audit card (and its review list)
        publish_review_queue(key, page_rows=5)
        create_table_artifact(key="review-as-a-table", table=[
            {"case id": case, "account": account, "reason": reason}
            for case, account, reason in expected[:5]])

    publish()
    pages = latest([review_page_key(key, n) for n in (1, 2, 3)])
    ids = [pages[review_page_key(key, n)].latest_id for n in (1, 2, 3)]
    (table_artifact,) = latest(["review-as-a-table"]).values()
    (audit_card,) = latest([artifact_key(key, "audit")]).values()
    with engine.connect() as conn:
        longest = max((row["reason"] or "" for row in trail(conn, load_incident(conn, key).id)),
                      key=len)
    assert len(longest) > 150, longest
    ui = f"{prefect_server}/v2"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(f"{ui}/artifacts/artifact/{ids[0]}")
            table = page.get_by_role("table")
            expect(table.get_by_role("columnheader")).to_have_text(
                ["case id", "account", "reason"])
            expect(table.get_by_role("row")).to_have_count(6)
            reason = table.get_by_role("row").nth(1).get_by_role("cell").nth(2)
            assert reason.inner_text().strip().replace(WORD_JOINER, "") == expected[0][2]
            # Wrapped over several lines, within the window: read without scrolling.
            # The UI lays the page out again, and may draw the table anew, as its parts come
            # in: the cell is found again at each look, until the last layout is in.
            reads_whole = """cell => cell.scrollWidth <= cell.clientWidth
                && cell.getBoundingClientRect().height > 60
                && cell.getBoundingClientRect().right <= document.documentElement.clientWidth"""
            until_laid_out(page, reason, reads_whole, "the reason's cell is not whole and "
                           "wrapped")
            # The only links are the pages': a web address in a reason stays text (the
            # UI's markdown turns a bare https://..., www.... or a@b.c into a link). Read
            # once the pages' links are drawn: the table can be laid out before them.
            expect(page.get_by_role("link", name="page 3", exact=True)).to_be_visible()
            hrefs = page.get_by_test_id("markdown-display").locator("a").evaluate_all(
                "links => links.map(link => link.getAttribute('href'))")
            assert hrefs == [f"../artifact/{ids[1]}", f"../artifact/{ids[2]}"], hrefs
            shot_path = shots / "review-list-page-1.png"
            page.screenshot(path=str(shot_path), full_page=True)

            page.get_by_role("link", name="page 2", exact=True).click()
            page.wait_for_url(re.compile(rf"/artifacts/artifact/{ids[1]}$"))
            rows = page.get_by_role("table").get_by_role("row")
            expect(rows.nth(1).get_by_role("cell").first).to_have_text(str(expected[5][0]))
            page.get_by_role("link", name="page 3", exact=True).click()
            page.wait_for_url(re.compile(rf"/artifacts/artifact/{ids[2]}$"))
            expect(page.get_by_role("table").get_by_role("row")).to_have_count(3)

            # What the list was: a table artifact cuts the same reason to one line.
            page.goto(f"{ui}/artifacts/artifact/{table_artifact.latest_id}")
            cut = page.get_by_title(expected[0][2], exact=True)
            expect(cut).to_be_visible()
            page.wait_for_timeout(1000)  # the table is drawn again once its data is in
            # One line of some 4,000 pixels in a box of some 700 that scrolls sideways.
            assert cut.evaluate("""span => span.getBoundingClientRect().height < 30
                && span.getBoundingClientRect().width
                   > 2 * span.closest('table').parentElement.clientWidth""")

            # The audit card: each transition's reason whole, wrapped in its cell.
            page.goto(f"{ui}/artifacts/artifact/{audit_card.latest_id}")
            table = page.get_by_role("table")
            expect(table.get_by_role("columnheader")).to_have_text(
                ["at", "from", "to", "who", "why"])
            why = table.get_by_role("cell").filter(has_text=longest[:40]).first
            expect(why).to_be_visible()
            assert why.inner_text().strip().replace(WORD_JOINER, "") == longest
            until_laid_out(page, why, reads_whole.replace("> 60", "> 30"),
                           "the audit card's reason is not whole and wrapped")
        finally:
            browser.close()
