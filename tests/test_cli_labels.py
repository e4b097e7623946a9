"""``python -m doc_core label list|set|delete|export|import``: the label store from the command line, without TensorFlow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from doc_core.cli import main
from doc_core.workflow.labels import LABELS_DB_ENV, LabelStore, image_key

ROOT = Path(__file__).resolve().parent.parent
RUN = "20250101-120000-demo-ab12"
KEYS = [image_key(np.full((2, 3), i, np.uint8)) for i in range(5)]


@pytest.fixture(autouse=True)
def no_labels_env(monkeypatch):
    monkeypatch.delenv(LABELS_DB_ENV, raising=False)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_set_list_delete(capsys, tmp_path):
    runs = str(tmp_path)
    code, out, _ = _run(capsys, "label", "set", "--runs", runs, "--run", RUN, "--key", KEYS[0], "--label", "anomaly",
                        "--note", "scuff on the toe", "--source", "test:4")
    assert code == 0 and json.loads(out)["label"] == "anomaly"
    assert (tmp_path / "labels.sqlite").is_file()  # one file per runs folder
    _run(capsys, "label", "set", "--runs", runs, "--run", "other-run", "--key", KEYS[1], "--label", "normal")
    code, out, err = _run(capsys, "label", "list", "--runs", runs, "--run", RUN)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split() == ["image_key", "label", "updated_at", "source", "note"]
    assert lines[1].startswith(KEYS[0]) and "anomaly" in lines[1] and "scuff on the toe" in lines[1]
    assert "1 labels in run" in err and "0 normal, 1 anomaly, 0 unsure" in err
    code, out, _ = _run(capsys, "label", "list", "--runs", runs)  # every run
    assert code == 0 and len(out.splitlines()) == 3 and out.splitlines()[0].startswith("run_id")
    code, out, _ = _run(capsys, "label", "list", "--runs", runs, "--run", RUN, "--json")
    doc = json.loads(out)
    assert doc["counts"] == {"normal": 0, "anomaly": 1, "unsure": 0}
    assert [(r["image_key"], r["note"], r["source"]) for r in doc["labels"]] == [(KEYS[0], "scuff on the toe",
                                                                                    "test:4")]
    code, out, _ = _run(capsys, "label", "delete", "--runs", runs, "--run", RUN, "--key", KEYS[0])
    assert code == 0 and json.loads(out) == {"deleted": True}
    assert LabelStore(runs_dir=tmp_path).labels(RUN) == []


def test_db_option_and_environment_choose_the_file(capsys, tmp_path, monkeypatch):
    _run(capsys, "label", "set", "--db", str(tmp_path / "a.sqlite"), "--run", RUN, "--key", KEYS[0], "--label",
         "normal")
    assert LabelStore(tmp_path / "a.sqlite").counts(RUN)["normal"] == 1
    monkeypatch.setenv(LABELS_DB_ENV, str(tmp_path / "env.sqlite"))
    _run(capsys, "label", "set", "--run", RUN, "--key", KEYS[1], "--label", "unsure")
    assert LabelStore(tmp_path / "env.sqlite").counts(RUN)["unsure"] == 1
    code, out, _ = _run(capsys, "label", "list", "--json")
    assert json.loads(out)["db"] == str(tmp_path / "env.sqlite")


def test_export_refuses_to_overwrite_and_import_round_trips(capsys, tmp_path):
    db = str(tmp_path / "labels.sqlite")
    store = LabelStore(db)
    store.set_many(RUN, [(KEYS[0], "normal", "=fine"), (KEYS[1], "anomaly", "dent, 2 mm")])
    store.set("run-2", KEYS[2], "unsure")
    out = tmp_path / "labels.csv"
    out.write_text("keep me")
    code, _, err = _run(capsys, "label", "export", "--db", db, "--out", str(out))
    assert code == 1 and "exists" in err and "--force" in err and out.read_text() == "keep me"
    code, stdout, _ = _run(capsys, "label", "export", "--db", db, "--out", str(out), "--force")
    assert code == 0 and json.loads(stdout)["labels"] == 3
    code, stdout, _ = _run(capsys, "label", "export", "--db", db, "--out", "-", "--run", RUN)
    assert code == 0 and stdout.splitlines()[0].startswith("run_id,image_key,label") and len(stdout.splitlines()) == 3
    other = str(tmp_path / "other.sqlite")
    code, stdout, _ = _run(capsys, "label", "import", "--db", other, str(out))
    assert code == 0 and json.loads(stdout)["imported"] == 3
    assert LabelStore(other).labels(None) == store.labels(None)


def test_a_bad_csv_row_is_one_error_line_and_nothing_is_imported(capsys, tmp_path):
    db = str(tmp_path / "labels.sqlite")
    csv = tmp_path / "in.csv"
    csv.write_text(f"run_id,image_key,label\n{RUN},{KEYS[0]},normal\n{RUN},{KEYS[1]},defect\n")
    code, out, err = _run(capsys, "label", "import", "--db", db, str(csv))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "line 3" in err and "'defect'" in err
    assert LabelStore(db).labels(None) == []


@pytest.mark.parametrize("argv, match", [
    (["label", "set", "--run", RUN, "--key", "12", "--label", "normal"], "not an image key"),
    (["label", "list", "--run", "../x"], "not a valid run id"),
])
def test_invalid_input_exits_2(capsys, tmp_path, argv, match):
    code, _, err = _run(capsys, *argv, "--db", str(tmp_path / "l.sqlite"))
    assert code == 2 and match in err and "Traceback" not in err


def test_a_damaged_database_is_one_error_line(capsys, tmp_path):
    (tmp_path / "labels.sqlite").write_bytes(os.urandom(20_000))
    code, out, err = _run(capsys, "label", "list", "--runs", str(tmp_path))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and str(tmp_path / "labels.sqlite") in err


def test_label_commands_import_no_tensorflow(tmp_path):
    db, csv = tmp_path / "l.sqlite", tmp_path / "l.csv"
    code = (
        "import sys\n"
        "from doc_core.cli import main\n"
        f"db, csv, key = {str(db)!r}, {str(csv)!r}, {KEYS[0]!r}\n"
        "assert main(['label', 'set', '--db', db, '--run', 'r1', '--key', key, '--label', 'normal']) == 0\n"
        "assert main(['label', 'list', '--db', db]) == 0\n"
        "assert main(['label', 'export', '--db', db, '--out', csv]) == 0\n"
        "assert main(['label', 'import', '--db', db, csv]) == 0\n"
        "for argv in (['--help'], ['label', '--help'], ['label', 'set', '--label', 'bad']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, 2), exc.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "label" in proc.stdout and LabelStore(db).counts("r1")["normal"] == 1


def test_top_level_help_lists_label(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"^\s+label\s+analysts' labels", capsys.readouterr().out, re.M)
