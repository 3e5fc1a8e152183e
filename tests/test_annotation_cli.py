"""`python -m annotation` as a user runs it: real subprocesses, a real SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.sample_data import write_simulated_esnli
from annotation.store import Store

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (DATA / "esnli").exists(), reason=f"shared dev data not found at {DATA}")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "annotation", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_create_list_and_issue_links(tmp_path):
    predictions = write_simulated_esnli(tmp_path / "p.jsonl", DATA, count=40, seed=7)
    db = str(tmp_path / "s.db")
    created = cli("study", "create", "--db", db, "--predictions", str(predictions), "--preset", "evil",
                  "--per-label", "2", "--annotators-per-item", "2", "--items-per-page", "5", "--seed", "3",
                  "--name", "My Study")
    assert created.returncode == 0, created.stderr
    assert "created study my-study: 6 items, preset evil" in created.stdout
    assert "sign-ups capped at 6" in created.stdout  # 2 x ceil(6 items x 2 per item / 5 per annotator)
    raised = cli("study", "set-max-signups", "--db", db, "--study", "my-study", "40")
    assert raised.returncode == 0 and "capped at 40" in raised.stdout and Store(db).study("my-study")["max_signups"] == 40
    listed = cli("study", "list", "--db", db, "--json")
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["items"], r["annotators_per_item"], r["items_per_page"]) for r in rows] == \
        [("my-study", 6, 2, 5)]
    links = cli("annotators", "add", "--db", db, "--study", "my-study", "--count", "3", "--base-url",
                "https://rate.example.org")
    assert links.returncode == 0, links.stderr
    urls = links.stdout.split()
    tokens = {a["token"] for a in Store(db).db["annotators"].rows}
    assert len(urls) == 3 and {u.split("token=")[1] for u in urls} == tokens
    assert all(u.startswith("https://rate.example.org/?token=") for u in urls)
    assert "PROLIFIC_PID={{%PROLIFIC_PID%}}" in links.stderr
    table = cli("study", "list", "--db", db).stdout.splitlines()
    assert table[0].split()[:7] == ["id", "status", "preset", "items", "annotators", "annotations", "created"]
    assert table[1].split()[:6] == ["my-study", "open", "evil", "6", "3", "0/12"]  # submitted / needed
    protocol = Store(db).study("my-study")["protocol"]
    assert [s["value"] for s in protocol["shortcomings"]][-1] == "none"  # evil's checklist is in the study


def test_all_flag_and_custom_preset_file(tmp_path):
    predictions = write_simulated_esnli(tmp_path / "p.jsonl", DATA, count=40, accuracy=0.5, seed=8)
    preset = json.loads((ROOT / "annotation" / "presets" / "feb.json").read_text())
    preset.update(name="mine", rate=["model"], gate={"enabled": False, "policy": "record"})
    preset_file = tmp_path / "mine.json"
    preset_file.write_text(json.dumps(preset))
    db = str(tmp_path / "s.db")
    made = cli("study", "create", "--db", db, "--predictions", str(predictions), "--preset", str(preset_file),
               "--all", "--per-label", "0")
    assert made.returncode == 0, made.stderr
    study = Store(db).study("p")
    assert study["preset"] == "mine" and study["selection"]["chosen"] == 40
    assert Store(db).db["items"].count_where("correct = 0") > 0


def test_bad_input_is_one_clear_line(tmp_path):
    predictions = write_simulated_esnli(tmp_path / "p.jsonl", DATA, count=5, seed=9)
    lines = predictions.read_text().splitlines()
    lines[3] = lines[3].replace('"correct": true', '"correct": "yes"').replace('"correct": false', '"correct": "no"')
    predictions.write_text("\n".join(lines) + "\n")
    result = cli("study", "create", "--db", str(tmp_path / "s.db"), "--predictions", str(predictions))
    assert result.returncode == 2
    assert "p.jsonl:4" in result.stderr and "field 'correct'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = cli("annotators", "add", "--db", str(tmp_path / "s.db"), "--study", "nope", "--count", "1")
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr
    unknown = cli("study", "create", "--db", str(tmp_path / "s.db"), "--predictions", str(predictions),
                  "--preset", "fancy")
    assert unknown.returncode == 2 and "unknown preset 'fancy'" in unknown.stderr
