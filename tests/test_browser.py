"""Browser tests in Debian chromium: the annotator page (keyboard, phone width, refused submits next to the
button, drafts kept over a reload, closed studies, the Prolific redirect) and every Admin and Results panel at
desktop (1280 px) and phone (390 px) width, failing on `[object Object]`, raw JSON in visible text and error
messages away from the control that caused them."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from annotation.sample_data import simulated_esnli_predictions
from annotation.store import STUDY_CLOSED, RatingInput, Store, StudySettings
from sparsefit.predictions import write_predictions
from conftest import free_port

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
PAYLOAD = "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\"> ${window.__xss = 3}"
pytestmark = [
    pytest.mark.skipif(not (DATA / "esnli").exists(), reason=f"shared dev data not found at {DATA}"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium"),
]



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from annotation.ui import build_app, launch_options

    folder = tmp_path_factory.mktemp("browser")
    records = simulated_esnli_predictions(DATA, count=30, accuracy=1.0, seed=4)
    clean = write_predictions(folder / "clean.jsonl", records)
    for record in records:
        record.inputs = {"premise": PAYLOAD + " " + record.inputs["premise"], "hypothesis": PAYLOAD}
        record.pred_explanation = PAYLOAD
    hostile = write_predictions(folder / "hostile.jsonl", records)
    store = Store(folder / "studies.db")
    studies = {"clean": store.create_study(clean, StudySettings(per_label=1, items_per_page=2, name="clean")),
               "evil": store.create_study(clean, StudySettings(preset="evil", per_label=1, name="evil")),
               "hostile": store.create_study(hostile, StudySettings(per_label=1, name="hostile")),
               "rated": store.create_study(clean, StudySettings(per_label=2, annotators_per_item=2, name="rated")),
               "prolific": store.create_study(clean, StudySettings(per_label=1, items_per_page=1, name="prolific")),
               "drafts": store.create_study(clean, StudySettings(per_label=2, name="drafts"))}
    rate_everything(store, studies["rated"], annotators=3)
    demo = build_app(folder / "studies.db", "pw", models_dir=folder, quickstart_predictions=folder / "none.jsonl")
    port = free_port()
    demo.queue()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    yield {"url": f"http://127.0.0.1:{port}/", "store": store, "studies": studies}
    demo.close()


def rate_everything(store: Store, study_id: str, annotators: int) -> None:
    """Annotators work through the store (as the app would), so the Results tab has ratings to show."""
    rng = random.Random(0)
    for person in store.add_annotators(study_id, annotators):
        while (assignment := store.next_assignment(person)) is not None:
            gold = store.item(assignment.item_id)["gold_label"]
            store.answer_gate(person, assignment.id, gold)
            store.submit(person, assignment.id, {q: RatingInput(rng.choice(["yes", "weak_yes", "weak_no", "no"]))
                                                 for q in ("model", "gold")}, "")


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield instance
        instance.close()


def current_gold(store: Store, annotator_id: str) -> tuple[str, list[str]]:
    row = store.db.execute("SELECT i.gold_label, s.protocol_json FROM assignments a JOIN items i ON i.id = a.item_id "
                           "JOIN studies s ON s.id = a.study_id WHERE a.annotator_id = ? AND a.status = 'assigned'",
                           [annotator_id]).fetchone()
    options = json.loads(row[1])["resolved"]["gate_questions"]["esnli"]["options"]
    return row[0], options


def test_complete_an_item_with_the_keyboard(served, browser, tmp_path):
    store: Store = served["store"]
    annotator = store.add_annotators(served["studies"]["clean"], 1)[0]
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(f"{served['url']}?token={annotator.token}")
    page.wait_for_selector("#sf-gate input[type=radio]", timeout=30000)
    assert page.locator("#sf-progress").inner_text().strip() == "Item 1 of 2"
    assert not page.get_by_role("tab", name="Admin").is_visible()  # annotators see only their tab

    gold, options = current_gold(store, annotator.id)
    page.keyboard.press(str(options.index(gold) + 1))
    page.keyboard.press("Enter")
    page.wait_for_selector("#sf-rating-a input[type=radio]", state="visible", timeout=20000)
    assert gold in page.locator("#sf-answer").inner_text().lower()
    page.wait_for_timeout(800)  # let the "pending" fade of the last event finish before the screenshot
    # the README's screenshot is refreshed only on request, so a test run leaves the work tree clean
    shot = ROOT / "docs" / "annotate.png" if os.environ.get("SPARSEFIT_UPDATE_SCREENSHOT") else tmp_path / "a.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.keyboard.press("1")  # Explanation A: Yes
    page.keyboard.press("3")  # then Explanation B: Weak no
    assert page.locator("#sf-rating-a input[type=radio]").nth(0).is_checked()
    assert page.locator("#sf-rating-b input[type=radio]").nth(2).is_checked()
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#sf-progress').innerText.trim() === 'Item 2 of 2'",
                           timeout=20000)
    rows = list(store.db.query("SELECT shown_position, rating, seconds_spent FROM ratings WHERE annotator_id = ? "
                               "ORDER BY shown_position", [annotator.id]))
    assert [(r["shown_position"], r["rating"]) for r in rows] == [(1, "yes"), (2, "weak_no")]
    assert all(r["seconds_spent"] > 0 for r in rows)
    page.wait_for_selector("#sf-gate input[type=radio]", state="visible")  # the next item starts at its gate
    # the last item of the page: then thanks and the completion code
    gold, options = current_gold(store, annotator.id)
    page.keyboard.press(str(options.index(gold) + 1))
    page.keyboard.press("Enter")
    page.wait_for_selector("#sf-rating-b input[type=radio]", state="visible", timeout=20000)
    for key in ("2", "2", "Enter"):
        page.keyboard.press(key)
    page.wait_for_selector("#sf-completion-code", timeout=20000)
    assert page.locator("#sf-completion-code").inner_text() == store.db["annotators"].get(annotator.id)["completion_code"]
    assert not page.locator("#sf-submit").is_visible()
    page.close()


def test_texts_from_predictions_render_as_text(served, browser):
    store: Store = served["store"]
    annotator = store.add_annotators(served["studies"]["hostile"], 1)[0]
    page = browser.new_page()
    page.goto(f"{served['url']}?token={annotator.token}")
    page.wait_for_selector("#sf-gate input[type=radio]", timeout=30000)
    assert "<script>window.__xss = 1</script>" in page.locator("#sf-inputs").inner_text()
    gold, options = current_gold(store, annotator.id)
    page.keyboard.press(str(options.index(gold) + 1))
    page.keyboard.press("Enter")
    page.wait_for_selector("#sf-rating-a input[type=radio]", state="visible", timeout=20000)
    shown = page.locator("#sf-expl-a").inner_text() + page.locator("#sf-expl-b").inner_text()
    assert "onerror=" in shown
    assert page.evaluate("window.__xss") is None
    assert page.locator("#sf-inputs img, #sf-expl-a img, #sf-expl-b img, #sf-inputs script").count() == 0
    page.close()


def test_shortcomings_checklist_is_required_and_stored(served, browser):
    store: Store = served["store"]
    annotator = store.add_annotators(served["studies"]["evil"], 1)[0]
    page = browser.new_page(viewport={"width": 1200, "height": 1200})
    page.goto(f"{served['url']}?token={annotator.token}")
    page.wait_for_selector("#sf-gate input[type=radio]", timeout=30000)
    gold, options = current_gold(store, annotator.id)
    page.keyboard.press(str(options.index(gold) + 1))
    page.keyboard.press("Enter")
    page.wait_for_selector("#sf-rating-a input[type=radio]", state="visible", timeout=20000)
    page.keyboard.press("2")
    page.keyboard.press("4")
    page.locator("#sf-short-a input[type=checkbox]").nth(0).check()  # Restates the input
    page.keyboard.press("Enter")  # B has no shortcomings ticked: refused, the choices stay
    page.wait_for_function("(document.querySelector('#sf-submit-msg')?.innerText || '').includes('Explanation B')")
    assert_near(page, "#sf-submit-msg", "#sf-submit")
    assert page.locator("#sf-rating-a input[type=radio]").nth(1).is_checked()
    page.locator("#sf-short-b input[type=checkbox]").nth(1).check()  # Insufficient justification
    page.locator("#sf-short-b input[type=checkbox]").nth(2).check()  # Confusing or wrong
    page.locator("#sf-submit").click()
    page.wait_for_function("document.querySelector('#sf-progress').innerText.trim() === 'Item 2 of 3'")
    rows = list(store.db.query("SELECT shown_position, rating, shortcomings_json FROM ratings "
                               "WHERE annotator_id = ? ORDER BY shown_position", [annotator.id]))
    assert [(r["shown_position"], r["rating"], json.loads(r["shortcomings_json"])) for r in rows] == [
        (1, "weak_yes", ["restates_input"]), (2, "no", ["insufficient", "confusing_or_wrong"])]
    page.close()


def test_prolific_entry_needs_the_full_study_url(served, browser):
    from annotation.admin import prolific_link
    store: Store = served["store"]
    study = served["studies"]["clean"]
    full = prolific_link(served["url"], study, store.study(study)["entry_key"])
    page = browser.new_page()
    page.goto(full.replace("{{%PROLIFIC_PID%}}", "REALPID").replace("{{%STUDY_ID%}}", "S").replace(
        "{{%SESSION_ID%}}", "X"))
    page.wait_for_selector("#sf-gate input[type=radio]", timeout=30000)
    page.goto(f"{served['url']}?study={study}&PROLIFIC_PID=MADEUP")  # the study id alone, as every view shows it
    page.wait_for_function("(document.querySelector('#sf-message')?.innerText || '').includes('not valid')",
                           timeout=30000)
    assert not page.locator("#sf-gate").is_visible()
    assert store.db["annotators"].count_where("prolific_pid = 'MADEUP'") == 0
    assert store.db["annotators"].count_where("prolific_pid = 'REALPID'") == 1
    page.close()


# ---------------------------------------------------------------- what a person sees

WIDTHS = {"desktop": 1280, "phone": 390}
JSON_BLOB = re.compile(r'[{\[]\s*"[^"]*"\s*:')  # {"key": ... or [{"key": ... shown as text


def assert_readable(page) -> str:
    """Visible text has no `[object Object]`, no raw JSON and no traceback; returns the text."""
    text = page.locator("body").inner_text()
    assert "[object Object]" not in text
    assert not JSON_BLOB.search(text), JSON_BLOB.search(text).group(0)
    assert "Traceback" not in text and "field '" not in text
    return text


def assert_near(page, message: str, control: str, limit: float = 200) -> None:
    """The message box sits within `limit` px (vertically) of the control that caused it, and is on screen
    in the same column (not at the top of the page)."""
    m, c = page.locator(message).bounding_box(), page.locator(control).bounding_box()
    assert m and c and m["height"] > 0, (message, m, control, c)
    gap = max(0.0, m["y"] - (c["y"] + c["height"]), c["y"] - (m["y"] + m["height"]))
    assert gap < limit, f"{message} is {gap:.0f} px from {control}"


def wait_text(page, selector: str, text: str, timeout: float = 30000) -> str:
    """Wait until the element's text contains `text` (case-insensitive: CSS may upper-case a badge)."""
    try:
        page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').toLowerCase().includes(t)",
                               arg=[selector, text.lower()], timeout=timeout)
    except Exception as err:  # say what the page showed instead
        shown = page.evaluate("(s) => document.querySelector(s)?.innerText", selector)
        raise AssertionError(f"{selector} never showed {text!r}; it shows {shown!r}") from err
    return page.locator(selector).inner_text()


def open_tab(page, name: str) -> None:
    tab = page.locator("button[role=tab]", has_text=name)
    if not tab.is_visible():  # narrow window: Gradio moves the last tabs into a "More tabs" menu
        page.get_by_label("More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text=name)
    tab.click()


def open_panel(page, title: str) -> None:
    page.get_by_role("button", name=re.compile("^" + re.escape(title) + r"\W*$")).click()
    page.wait_for_timeout(300)


def screenshot(page, name: str, tmp_path: Path, full_page: bool = True) -> Path:
    """docs/<name>.png only when SPARSEFIT_UPDATE_SCREENSHOT=1, so test runs leave the work tree clean."""
    shot = ROOT / "docs" / f"{name}.png" if os.environ.get("SPARSEFIT_UPDATE_SCREENSHOT") else tmp_path / f"{name}.png"
    page.wait_for_timeout(600)  # let the "pending" fade of the last event finish
    page.screenshot(path=str(shot), full_page=full_page)
    return shot


def sign_in(page, password: str = "pw") -> None:
    page.locator("#sf-admin-password input").fill(password)
    page.locator("#sf-admin-sign-in").click()
    wait_text(page, "#sf-admin-sign-in-msg", "Signed in")


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_admin_panels_read_well_and_errors_sit_next_to_their_controls(served, browser, tmp_path, width):
    store: Store = served["store"]
    predictions = write_predictions(tmp_path / f"admin-{width}.jsonl",
                                    simulated_esnli_predictions(DATA, count=30, seed=5))
    bad = tmp_path / "bad.jsonl"
    lines = predictions.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace('"gold_explanations": [', '"gold_explanations": [7, ')]))
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(served["url"])
    page.wait_for_selector("button[role=tab]")
    open_tab(page, "Admin")
    page.wait_for_selector("#sf-admin-sign-in")
    # before sign-in: only the password box; no empty tables or {...}
    assert not page.locator("#sf-admin-study").is_visible() and not page.locator("#sf-admin-annotators").is_visible()
    assert_readable(page)

    page.locator("#sf-admin-password input").fill("wrong")
    page.locator("#sf-admin-sign-in").click()
    message = wait_text(page, "#sf-admin-sign-in-msg", "Wrong admin password")
    assert "tries left" in message and "field" not in message
    assert_near(page, "#sf-admin-sign-in-msg", "#sf-admin-sign-in")
    sign_in(page)

    # study overview and per-annotator table (pick the study with ratings)
    page.locator("#sf-admin-study input").click()
    page.get_by_role("option", name=re.compile(r"^rated · open")).click()
    wait_text(page, "#sf-admin-overview", "preset feb · 10 items per annotator · 2 annotators per item")
    assert page.locator("#sf-admin-overview progress").count() == 2
    rated = store.study(next(s["id"] for s in store.studies() if s["name"] == "rated"))
    assert f"Prolific sign-ups 0 / {rated['max_signups'] or 'no cap'}" in page.locator("#sf-admin-overview").inner_text()
    table = page.locator("#sf-admin-annotators")
    rows_shown = "document.querySelector('#sf-admin-annotators [role=grid]')?.getAttribute('aria-rowcount')"
    page.wait_for_function(f"{rows_shown} === '4'")  # the header and one row per annotator
    header = table.locator("thead").first.inner_text()
    assert "annotator" in header and "rated" in header and "ended at gate" in header
    assert "link" in table.inner_text()
    assert_readable(page)
    screenshot(page, "admin" if width == WIDTHS["desktop"] else "admin-phone", tmp_path,
               full_page=width == WIDTHS["desktop"])

    # create: a bad file and a taken name give their error under the Create button
    open_panel(page, "Create a study")
    path_box = page.locator("#sf-admin-path textarea, #sf-admin-path input").first
    path_box.fill(str(bad))
    page.locator("#sf-admin-create").click()
    message = wait_text(page, "#sf-admin-create-msg", "bad.jsonl:2")
    assert "gold_explanations" in message
    assert_near(page, "#sf-admin-create-msg", "#sf-admin-create")
    path_box.fill(str(predictions))
    page.locator("#sf-admin-name input").fill("clean")
    page.locator("#sf-admin-create").click()
    wait_text(page, "#sf-admin-create-msg", "already exists")
    assert_near(page, "#sf-admin-create-msg", "#sf-admin-name")
    study_id = f"new-{width}"
    page.locator("#sf-admin-name input").fill(study_id)
    assert page.locator("#sf-admin-max-signups").is_visible()  # empty by default: twice the annotators needed
    assert "Max Prolific sign-ups" in page.locator("#sf-admin-max-signups").inner_text()
    cap_box = page.locator("#sf-admin-max-signups textarea, #sf-admin-max-signups input").first
    cap_box.fill("lots")
    page.locator("#sf-admin-create").click()
    wait_text(page, "#sf-admin-create-msg", "write a whole number (0 = no cap) or leave it empty")
    assert_near(page, "#sf-admin-create-msg", "#sf-admin-create")
    cap_box.fill("")
    page.locator("#sf-admin-create").click()
    created = wait_text(page, "#sf-admin-create-msg", f"Created study {study_id}")
    assert f"Prolific sign-ups capped at {store.study(study_id)['max_signups']}" in created
    assert_readable(page)

    # links
    open_panel(page, "Annotator links")
    page.locator("#sf-admin-add").click()
    wait_text(page, "#sf-admin-add-msg", f"Added 3 annotators to {study_id}")
    assert_near(page, "#sf-admin-add-msg", "#sf-admin-add")
    links = page.locator("#sf-admin-links textarea").input_value().split()
    assert {link.split("token=")[1] for link in links} == {
        a["token"] for a in store.db["annotators"].rows_where("study_id = ?", [study_id])}
    assert all(link.startswith(served["url"] + "?token=") for link in links)
    assert "PROLIFIC_PID={{%PROLIFIC_PID%}}" in page.locator("#sf-admin-prolific textarea").input_value()
    page.wait_for_function(f"{rows_shown} === '4'")
    assert_readable(page)

    # export
    open_panel(page, "Export")
    page.locator("#sf-admin-export").click()
    wait_text(page, "#sf-admin-export-msg", f"Exported {study_id} as csv")
    assert_near(page, "#sf-admin-export-msg", "#sf-admin-export")
    assert page.locator("#sf-admin-export-panel a").count() >= 1  # the download link

    # lifecycle: close, reopen, archive; delete asks for the id, then works (no ratings yet)
    open_panel(page, "Study status: close, reopen, archive, delete")
    page.locator("#sf-admin-close").click()
    wait_text(page, "#sf-admin-lifecycle-msg", "closed")
    page.wait_for_selector("#sf-admin-overview .sf-badge.sf-closed")
    assert_near(page, "#sf-admin-lifecycle-msg", "#sf-admin-delete")
    assert store.study(study_id)["status"] == "closed"
    page.locator("#sf-admin-reopen").click()
    wait_text(page, "#sf-admin-lifecycle-msg", "reopened")
    page.locator("#sf-admin-delete").click()
    wait_text(page, "#sf-admin-lifecycle-msg", "type the study id")
    assert_near(page, "#sf-admin-lifecycle-msg", "#sf-admin-delete")
    page.locator("#sf-admin-confirm input").fill(study_id)
    page.locator("#sf-admin-delete").click()
    wait_text(page, "#sf-admin-lifecycle-msg", f"Deleted study {study_id}")
    assert study_id not in [s["id"] for s in store.studies()]
    assert_readable(page)

    # password change: a mismatch is refused next to the button; a real change works (then changed back)
    open_panel(page, "Admin password")
    page.locator("#sf-admin-new input").fill("a-new-password")
    page.locator("#sf-admin-repeat input").fill("another-one")
    page.locator("#sf-admin-change").click()
    wait_text(page, "#sf-admin-change-msg", "differ")
    assert_near(page, "#sf-admin-change-msg", "#sf-admin-change")
    page.locator("#sf-admin-repeat input").fill("a-new-password")
    page.locator("#sf-admin-change").click()
    wait_text(page, "#sf-admin-change-msg", "Password changed")
    sign_in(page, "a-new-password")
    from annotation import admin
    admin.ensure_admin_secret(store, "pw")  # back to what the rest of the module signs in with
    assert_readable(page)
    page.close()


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_results_panels_show_tables_and_plots(served, browser, tmp_path, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(served["url"])
    page.wait_for_selector("button[role=tab]")
    # the Demo tab opens first; its only models here are base models, and it says what to expect of them
    assert "base model, not fine-tuned" in wait_text(page, "#sf-demo-hint", "not fine-tuned")
    if width == WIDTHS["desktop"]:  # admins keep Gradio's footer (Gradio drops its API link on phones)
        assert page.get_by_text("Use via API").is_visible()
    open_tab(page, "Results")
    page.locator("#sf-results-list").click()
    message = wait_text(page, "#sf-results-list-msg", "Sign in on the Admin tab first")
    assert "above" not in message
    assert_near(page, "#sf-results-list-msg", "#sf-results-list")
    open_tab(page, "Admin")
    sign_in(page)
    open_tab(page, "Results")
    page.locator("#sf-results-list").click()
    wait_text(page, "#sf-results-list-msg", "studies")
    page.locator("#sf-results-study input").click()
    page.get_by_role("option", name=re.compile("^rated")).click()
    page.locator("#sf-results-analyze").click()
    wait_text(page, "#sf-results-status", "ratings kept", timeout=60000)
    assert_near(page, "#sf-results-status", "#sf-results-analyze")
    scores = page.locator("#sf-results-scores")
    assert "mean" in scores.locator("thead").first.inner_text()
    assert int(scores.locator("[role=grid]").get_attribute("aria-rowcount")) >= 3  # header + 2 systems
    for plot in ("score", "distribution", "scatter"):
        image = page.locator(f"#sf-results-{plot}-plot img")
        image.wait_for(timeout=20000)
        box, frame = image.bounding_box(), page.locator(f"#sf-results-{plot}-plot").bounding_box()
        assert box["width"] > 150 and box["height"] > 100
        assert box["y"] >= frame["y"] - 1  # the figure starts inside its frame: no label floats over it
        label = page.locator(f"#sf-results-{plot}-plot label")
        assert label.count() == 0 or not label.first.is_visible()
    assert_readable(page)
    screenshot(page, "results" if width == WIDTHS["desktop"] else "results-phone", tmp_path,
               full_page=width == WIDTHS["desktop"])
    page.locator("#sf-results-export").click()
    wait_text(page, "#sf-results-export-msg", "Exported rated-ratings.csv")
    assert_near(page, "#sf-results-export-msg", "#sf-results-export")
    page.close()


def test_phone_annotator_page_keeps_drafts_and_shows_refusals_at_the_button(served, browser, tmp_path):
    store: Store = served["store"]
    annotator = store.add_annotators(served["studies"]["drafts"], 1)[0]
    page = browser.new_page(viewport={"width": 390, "height": 800}, has_touch=True, is_mobile=True)
    page.goto(f"{served['url']}?token={annotator.token}")
    page.wait_for_selector("#sf-gate input[type=radio]", timeout=30000)
    assert page.locator("#sf-progress").inner_text().strip() == "Item 1 of 6"  # 6 items, not the page's 10
    text = assert_readable(page)
    assert "Use via API" not in text and "Keyboard" not in text  # no footer, no keyboard help on a phone
    key_hint = page.locator("#sf-gate label span").first.evaluate("e => getComputedStyle(e, '::after').content")
    assert key_hint in ("none", "normal")
    page.locator("#sf-gate-continue").click()  # no answer picked: said under the Continue button
    wait_text(page, "#sf-gate-msg", "Choose an answer first")
    assert_near(page, "#sf-gate-msg", "#sf-gate-continue", limit=120)
    gold, options = current_gold(store, annotator.id)
    page.locator("#sf-gate label").nth(options.index(gold)).click()
    page.locator("#sf-gate-continue").click()
    page.wait_for_selector("#sf-rating-a input[type=radio]", state="visible", timeout=20000)
    page.locator("#sf-rating-a label").nth(1).click()
    page.wait_for_timeout(300)
    page.reload()  # the picked rating survives a reload
    page.wait_for_selector("#sf-rating-a input[type=radio]", state="visible", timeout=30000)
    page.wait_for_function("document.querySelectorAll('#sf-rating-a input')[1]?.checked === true", timeout=10000)
    page.locator("#sf-submit").click()
    wait_text(page, "#sf-submit-msg", "Explanation B")
    assert_near(page, "#sf-submit-msg", "#sf-submit", limit=120)
    assert "Explanation B" in page.locator("#sf-rating-b-msg").inner_text()
    assert not page.locator("#sf-message").is_visible()  # not at the top of the page
    assert page.locator("#sf-rating-a input").nth(1).is_checked()
    page.locator("#sf-rating-b").scroll_into_view_if_needed()
    screenshot(page, "annotate-phone", tmp_path, full_page=False)
    page.locator("#sf-rating-b label").nth(0).click()
    page.locator("#sf-submit").click()
    wait_text(page, "#sf-progress", "Item 2 of 6")
    assert store.db["ratings"].count_where("annotator_id = ?", [annotator.id]) == 2
    page.wait_for_selector("#sf-gate input[type=radio]", state="visible")  # the next item, message gone
    assert not page.evaluate("(document.querySelector('#sf-submit-msg')?.innerText || '').trim()")
    page.close()


def test_desktop_shows_keyboard_hints(served, browser):
    store: Store = served["store"]
    annotator = store.add_annotators(served["studies"]["drafts"], 1)[0]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{served['url']}?token={annotator.token}")
    page.wait_for_selector("#sf-gate input[type=radio]", timeout=30000)
    assert "Keyboard" in page.locator("body").inner_text()
    hint = page.locator("#sf-gate label span").nth(1).evaluate("e => getComputedStyle(e, '::after').content")
    assert "counter(sf-key)" in hint or '"(2)"' in hint or "(" in hint
    assert not page.locator("footer").is_visible()
    page.close()


def test_closed_study_says_so_and_prolific_participants_are_sent_back(served, browser):
    store: Store = served["store"]
    study = served["studies"]["prolific"]
    page = browser.new_page(viewport={"width": 390, "height": 800})
    reached = []
    # the redirect target answers locally: nothing leaves the machine
    page.route("https://app.prolific.com/**", lambda route: (reached.append(route.request.url),
                                                            route.fulfill(body="back at Prolific")))
    page.goto(f"{served['url']}?study={study}&key={store.study(study)['entry_key']}&PROLIFIC_PID=PIDBROWSER&STUDY_ID=S&SESSION_ID=X")
    page.wait_for_selector("#sf-gate input[type=radio]", timeout=30000)
    annotator = store.db.execute("SELECT id FROM annotators WHERE prolific_pid = 'PIDBROWSER'").fetchone()[0]
    gold, options = current_gold(store, annotator)
    page.locator("#sf-gate label").nth(options.index(gold)).click()
    page.locator("#sf-gate-continue").click()
    page.wait_for_selector("#sf-rating-b input[type=radio]", state="visible", timeout=20000)
    page.locator("#sf-rating-a label").nth(0).click()
    page.locator("#sf-rating-b label").nth(0).click()
    page.locator("#sf-submit").click()
    code = store.study(study)["completion_code"]
    assert code in wait_text(page, "#sf-done", "completion code")
    assert page.locator("#sf-completion-link").get_attribute("href").endswith(f"cc={code}")
    page.wait_for_url("https://app.prolific.com/**", timeout=15000)
    assert reached and reached[0].endswith(f"cc={code}")

    store.set_study_status(study, "closed")
    page.goto(f"{served['url']}?study={study}&key={store.study(study)['entry_key']}&PROLIFIC_PID=PIDLATE&STUDY_ID=S&SESSION_ID=Y")
    wait_text(page, "#sf-message", "this study is closed")
    assert not page.locator("#sf-gate").is_visible() and not page.get_by_label("Link code").is_visible()
    assert STUDY_CLOSED in page.locator("#sf-message").inner_text()
    assert_readable(page)
    page.close()
    store.set_study_status(study, "open")



@pytest.mark.parametrize("width", [1280, 390])
def test_demo_menu_lists_runs_written_after_start_and_warns_on_base_models(served, browser, width):
    """A run that appears after the app started (a quickstart built in the background) is in the menu after a
    reload; a base model gets the not-fine-tuned hint, a run does not."""
    run = served["store"].path.parent / "runs" / f"late-{width}"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text("{}", encoding="utf-8")
    (run / "delta.safetensors").write_bytes(b"")
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(served["url"])
    wait_text(page, "#sf-demo-hint", "base model, not fine-tuned")
    page.get_by_label("Model").click()
    page.locator("li", has_text=f"run: runs/late-{width}").click()
    page.wait_for_function("!(document.querySelector('#sf-demo-hint')?.innerText || '').includes('base model')",
                           timeout=15000)
    assert_readable(page)
    page.close()
