"""Browser test in Debian chromium: complete an item with the keyboard only; user text renders as text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from annotation.sample_data import simulated_esnli_predictions
from annotation.store import Store, StudySettings
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
               "hostile": store.create_study(hostile, StudySettings(per_label=1, name="hostile"))}
    demo = build_app(folder / "studies.db", "pw", models_dir=folder, quickstart_predictions=folder / "none.jsonl")
    port = free_port()
    demo.queue()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    yield {"url": f"http://127.0.0.1:{port}/", "store": store, "studies": studies}
    demo.close()


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


def test_admin_creates_a_study_and_issues_links(served, browser, tmp_path):
    predictions = write_predictions(tmp_path / "admin.jsonl", simulated_esnli_predictions(DATA, count=30, seed=5))
    bad = tmp_path / "bad.jsonl"
    lines = predictions.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace('"gold_explanations": [', '"gold_explanations": [7, ')]))
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    page.goto(served["url"])
    page.wait_for_selector("button[role=tab]")
    tab = page.locator("button[role=tab]", has_text="Admin")
    if not tab.count():  # narrow window: Gradio moves the last tabs into a "More tabs" menu
        page.get_by_label("More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text="Admin")
    tab.click()
    status = page.locator("#sf-admin-status")
    page.locator("#sf-admin-password input").fill("wrong")
    page.locator("#sf-admin-sign-in").click()
    page.wait_for_function("document.querySelector('#sf-admin-status').innerText.includes('wrong admin password')")
    page.locator("#sf-admin-password input").fill("pw")
    page.get_by_text("Create a study").click()
    page.locator("#sf-admin-path textarea, #sf-admin-path input").first.fill(str(bad))
    page.locator("#sf-admin-create").click()
    page.wait_for_function("document.querySelector('#sf-admin-status').innerText.includes('bad.jsonl:2')")
    assert "gold_explanations" in status.inner_text() and "Traceback" not in page.content()
    page.locator("#sf-admin-path textarea, #sf-admin-path input").first.fill(str(predictions))
    page.locator("#sf-admin-create").click()
    page.wait_for_function("document.querySelector('#sf-admin-status').innerText.includes('Created study admin')")
    page.get_by_text("Annotator links").click()
    page.locator("#sf-admin-add").click()
    page.wait_for_function("document.querySelector('#sf-admin-links textarea').value.includes('token=')")
    links = page.locator("#sf-admin-links textarea").input_value().split()
    store: Store = served["store"]
    study_id = status.inner_text().split("to ")[-1].rstrip(".")
    assert {l.split("token=")[1] for l in links} == {a["token"] for a in store.db["annotators"].rows_where(
        "study_id = ?", [study_id])}
    assert all(l.startswith(served["url"] + "?token=") for l in links)
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
    page.wait_for_function("(document.querySelector('#sf-message')?.innerText || '').includes('Explanation B')")
    assert page.locator("#sf-rating-a input[type=radio]").nth(1).is_checked()
    page.locator("#sf-short-b input[type=checkbox]").nth(1).check()  # Insufficient justification
    page.locator("#sf-short-b input[type=checkbox]").nth(2).check()  # Confusing or wrong
    page.locator("#sf-submit").click()
    page.wait_for_function("document.querySelector('#sf-progress').innerText.trim() === 'Item 2 of 10'")
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
