"""doc_core.workflow.labels: the analysts' label store (SQLite, WAL, schema versions, several writers, CSV)."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import sqlite3
import threading

import numpy as np
import pytest

from doc_core.workflow import labels as L
from doc_core.workflow.labels import LabelRecord, LabelStore, LabelStoreError, image_key

RUN = "20250101-120000-demo-ab12"


KEYS = [image_key(np.array([[i // 256, i % 256]], np.uint8)) for i in range(600)]  # 600 distinct keys


@pytest.fixture
def store(tmp_path) -> LabelStore:
    return LabelStore(tmp_path / "labels.sqlite")


# --------------------------------------------------------------------------------------------------- image keys


def test_image_key_is_the_same_for_every_copy_of_the_same_pixels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    k = image_key(img)
    assert len(k) == 64 and L.IMAGE_KEY_PATTERN.match(k)
    fortran = np.asfortranarray(img)
    view = np.concatenate([img, img], axis=1)[:, :6]  # a non-contiguous view holding the same pixels
    assert not view.flags.c_contiguous
    assert image_key(img.copy()) == image_key(fortran) == image_key(view) == k
    grey = img[..., 0]
    assert image_key(grey) == image_key(grey[..., None])  # (H, W) and (H, W, 1): the same grey image
    assert image_key(grey) != k


def test_image_key_differs_for_different_images():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (8, 6, 1), dtype=np.uint8)
    other = img.copy()
    other[3, 2, 0] ^= 1  # one bit of one pixel
    same_bytes_other_shape = img.reshape(6, 8, 1)
    keys = {image_key(img), image_key(other), image_key(same_bytes_other_shape), image_key(img.reshape(8, 2, 3))}
    assert len(keys) == 4
    assert len(set(KEYS)) == len(KEYS)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int64)])
def test_image_key_takes_only_uint8_images(bad):
    with pytest.raises(TypeError, match="uint8"):
        image_key(bad)


@pytest.mark.parametrize("shape", [(4,), (2, 4, 4, 1), (0, 4, 1)])
def test_image_key_takes_one_image(shape):
    with pytest.raises(ValueError, match="one image"):
        image_key(np.zeros(shape, np.uint8))


# ------------------------------------------------------------------------------------------ schema and migrations


def test_new_database_has_the_schema_wal_and_version(store):
    assert store.schema_version == 0 and not store.path.exists()  # reading creates nothing
    assert store.labels(RUN) == [] and store.counts(RUN) == {"normal": 0, "anomaly": 0, "unsure": 0}
    assert not store.path.exists()
    store.set(RUN, KEYS[0], "normal")
    assert store.schema_version == L.SCHEMA_VERSION == len(L.MIGRATIONS) == 2
    with sqlite3.connect(store.path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA application_id").fetchone()[0] == L.APPLICATION_ID
        assert [r[0] for r in c.execute("SELECT version FROM schema_version ORDER BY version")] == [1, 2]
        cols = [r[1] for r in c.execute("PRAGMA table_info(labels)")]
    assert cols == ["run_id", "image_key", "label", "note", "source", "updated_at", "who"]


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
CREATE TABLE labels (run_id TEXT NOT NULL, image_key TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('normal', 'anomaly', 'unsure')), note TEXT, source TEXT,
    updated_at TEXT NOT NULL, PRIMARY KEY (run_id, image_key)) WITHOUT ROWID;
INSERT INTO schema_version VALUES (1, '2025-01-01T00:00:00.000000+00:00');
PRAGMA application_id = 1146045260;
"""


def test_a_version_1_database_is_migrated_and_keeps_its_labels(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as c:  # a file as version 1 of the store wrote it
        c.executescript(V1_SCHEMA)
        c.execute("INSERT INTO labels VALUES (?, ?, 'anomaly', 'scuff', 'test:3', '2025-01-02T03:04:05.000000+00:00')",
                  (RUN, KEYS[1]))
    c.close()
    store = LabelStore(path)
    assert store.get(RUN, KEYS[1]) == LabelRecord(RUN, KEYS[1], "anomaly", "scuff", "test:3",
                                                  "2025-01-02T03:04:05.000000+00:00", None)
    assert store.schema_version == 2
    store.set(RUN, KEYS[2], "normal", who="ana")
    assert store.get(RUN, KEYS[2]).who == "ana"
    with sqlite3.connect(path) as c:
        versions = [r[0] for r in c.execute("SELECT version FROM schema_version ORDER BY version")]
        indexes = [r[0] for r in c.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")]
    assert versions == [1, 2] and "labels_by_image" in indexes
    assert len(LabelStore(path).find(KEYS[1])) == 1  # a second store finds it migrated and does nothing more


def test_a_database_from_a_newer_version_is_refused_unchanged(tmp_path, store):
    store.set(RUN, KEYS[0], "normal")
    with sqlite3.connect(store.path) as c:
        c.execute("INSERT INTO schema_version VALUES (99, 'later')")
    c.close()
    before = store.path.read_bytes()
    with pytest.raises(LabelStoreError, match="version 99.*newer"):
        LabelStore(store.path).labels(RUN)
    assert store.path.read_bytes() == before


def test_another_sqlite_database_is_refused_unchanged(tmp_path):
    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE users (name TEXT)")
        c.execute("INSERT INTO users VALUES ('x')")
    c.close()
    before = path.read_bytes()
    for action in (lambda s: s.labels(RUN), lambda s: s.set(RUN, KEYS[0], "normal")):
        with pytest.raises(LabelStoreError, match="not a DOC Explorer labels database") as err:
            action(LabelStore(path))
        assert str(path) in str(err.value)
    assert path.read_bytes() == before


def test_a_labels_database_with_a_trigger_is_refused(store):
    """SQL in the file (a trigger that would wipe the labels on every insert) is never run."""
    store.set(RUN, KEYS[0], "normal")
    with sqlite3.connect(store.path) as c:
        c.execute("CREATE TRIGGER wipe AFTER INSERT ON labels BEGIN DELETE FROM labels; END")
    c.close()
    with pytest.raises(LabelStoreError, match="not a DOC Explorer labels database"):
        LabelStore(store.path).set(RUN, KEYS[1], "anomaly")


# ----------------------------------------------------------------------------------------------- set, get, delete


def test_set_get_overwrite_delete(store):
    rec = store.set(RUN, KEYS[0], "anomaly", note="scratch near the heel", source="test:17", who="ana")
    assert store.get(RUN, KEYS[0]) == rec
    assert rec.updated_at.endswith("+00:00")
    assert store.get(RUN, KEYS[1]) is None and store.get("other-run", KEYS[0]) is None
    rec2 = store.set(RUN, KEYS[0], "normal")  # overwrite: the note goes with the old label
    assert store.get(RUN, KEYS[0]) == rec2 and rec2.note is None and rec2.updated_at >= rec.updated_at
    store.set("other-run", KEYS[0], "unsure")
    assert [r.run_id for r in store.find(KEYS[0])] == ["other-run", RUN]  # the same image in another run
    assert store.counts(RUN) == {"normal": 1, "anomaly": 0, "unsure": 0}
    assert store.counts(None) == {"normal": 1, "anomaly": 0, "unsure": 1}
    assert store.run_ids() == sorted([RUN, "other-run"])
    assert store.delete(RUN, KEYS[0]) is True and store.delete(RUN, KEYS[0]) is False
    assert store.get(RUN, KEYS[0]) is None and store.get("other-run", KEYS[0]) is not None


def test_set_many_is_one_transaction(store):
    n = store.set_many(RUN, [(KEYS[0], "normal"), {"image_key": KEYS[1], "label": "anomaly", "note": "dent"},
                             (KEYS[2], "unsure", None, "test:2")], who="bob")
    assert n == 3 and store.counts(RUN) == {"normal": 1, "anomaly": 1, "unsure": 1}
    assert {r.updated_at for r in store.labels(RUN)} == {store.get(RUN, KEYS[0]).updated_at}
    with pytest.raises(ValueError, match="item 2"):
        store.set_many(RUN, [(KEYS[3], "normal"), (KEYS[4], "normal"), (KEYS[5], "broken")])
    assert store.get(RUN, KEYS[3]) is None and len(store.labels(RUN)) == 3  # none of the three was written


@pytest.mark.parametrize("args, match", [
    ((RUN, KEYS[0], "bad"), "not a label"),
    ((RUN, "abc", "normal"), "not an image key"),
    ((RUN, KEYS[0].upper(), "normal"), "not an image key"),
    (("../evil", KEYS[0], "normal"), "not a valid run id"),
    ((RUN, KEYS[0], "normal", "x" * (L.MAX_NOTE_CHARS + 1)), "at most 1000"),
    ((RUN, KEYS[0], "normal", "bell\x07"), "control character"),
])
def test_invalid_labels_are_refused(store, args, match):
    with pytest.raises(ValueError, match=match):
        store.set(*args)
    assert store.labels(RUN) == []


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    from doc_core.workflow import runs  # (TensorFlow is loaded by conftest anyway)

    assert L.RUNS_DIR_ENV == runs.RUNS_DIR_ENV and L.RUN_ID_PATTERN.pattern == runs.RUN_ID_PATTERN.pattern
    monkeypatch.delenv(L.LABELS_DB_ENV, raising=False)
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path / "r"))
    assert LabelStore().path == runs.default_runs_dir() / "labels.sqlite" == tmp_path / "r" / "labels.sqlite"
    monkeypatch.delenv(runs.RUNS_DIR_ENV)
    assert LabelStore().path == runs.default_runs_dir() / "labels.sqlite"
    monkeypatch.setenv(L.LABELS_DB_ENV, str(tmp_path / "mine.db"))
    assert LabelStore().path == tmp_path / "mine.db"
    assert LabelStore(runs_dir=tmp_path / "x").path == tmp_path / "x" / "labels.sqlite"  # an explicit folder wins
    assert LabelStore(tmp_path / "y.db").path == tmp_path / "y.db"
    LabelStore().set(RUN, KEYS[0], "normal")  # the first write creates the file
    assert (tmp_path / "mine.db").is_file()


# ------------------------------------------------------------------------------------------------------------ CSV


def test_csv_round_trip(store, tmp_path):
    store.set(RUN, KEYS[0], "anomaly", note='=HYPERLINK("x"), "quoted"\nsecond line', source="test:0", who="ana")
    store.set(RUN, KEYS[1], "normal", note="-5 mm off", source="/data/a b,c.png")
    store.set("run-2", KEYS[0], "unsure", note="'=already quoted")
    out = tmp_path / "labels.csv"
    assert store.export_csv(out) == 3
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(L.CSV_COLUMNS)
    assert "'=HYPERLINK" in text and ",'-5 mm off," in text  # a spreadsheet shows these as text
    with pytest.raises(FileExistsError):
        store.export_csv(out)
    assert store.export_csv(out, RUN, overwrite=True) == 2
    assert store.export_csv(out, overwrite=True) == 3
    fresh = LabelStore(tmp_path / "other.sqlite")
    assert fresh.import_csv(out) == 3
    assert fresh.labels(None) == store.labels(None)  # exactly, times and notes included
    buf = io.StringIO()
    fresh.export_csv(buf, "run-2")
    assert buf.getvalue().count("\n") == 2


def test_import_fills_in_missing_optional_columns(store, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(f"\ufeffimage_key,label,run_id\n{KEYS[0]},anomaly,{RUN}\n\n{KEYS[1]}, normal ,{RUN}\n",
                    encoding="utf-8")
    assert store.import_csv(path) == 2
    assert store.get(RUN, KEYS[1]).label == "normal" and store.get(RUN, KEYS[0]).updated_at


@pytest.mark.parametrize("line, match", [
    (f"{RUN},{KEYS[2]},maybe,,,,", "line 4: 'maybe' is not a label"),
    (f"{RUN},{KEYS[2][:10]},normal,,,,", "line 4: .* is not an image key"),
    (f"bad/run,{KEYS[2]},normal,,,,", "line 4: .* is not a valid run id"),
    (f"{RUN},{KEYS[2]},normal,,,yesterday,", "line 4: updated_at 'yesterday'"),
    (f"{RUN},{KEYS[2]},normal,,,2025-01-01T00:00:00,", "line 4: .*no time zone"),
    (f"{RUN},{KEYS[2]},normal", "line 4: 3 cells, the header has 7"),
    (f"{RUN},{KEYS[0]},normal,,,,", "line 4: .*already labelled on line 2"),
    (f'{RUN},{KEYS[2]},normal,"{"x" * 1001}",,,', "line 4: note is 1001 characters"),
])
def test_a_bad_row_is_named_and_nothing_is_imported(store, tmp_path, line, match):
    store.set(RUN, KEYS[5], "unsure")
    before = store.labels(None)
    path = tmp_path / "in.csv"
    path.write_text(",".join(L.CSV_COLUMNS) + f"\n{RUN},{KEYS[0]},normal,,,,\n{RUN},{KEYS[1]},anomaly,,,,\n{line}\n"
                    f"{RUN},{KEYS[3]},anomaly,,,,\n")
    with pytest.raises(LabelStoreError, match=match) as err:
        store.import_csv(path)
    assert str(path) in str(err.value)
    assert store.labels(None) == before  # the good rows before and after the bad one were not written either


@pytest.mark.parametrize("content, match", [
    ("", "is empty"),
    ("run_id,image_key\n", "missing: label"),
    ("run_id,image_key,label,colour\n", "unknown: 'colour'"),
    (b"run_id,image_key,label\n\xff\xfe\n", "not UTF-8"),
    ("run_id,image_key,label\nr,\0,normal\n", "line 2"),
])
def test_a_bad_csv_file_is_refused(store, tmp_path, content, match):
    path = tmp_path / "in.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LabelStoreError, match=match):
        store.import_csv(path)
    assert not store.path.exists()


# ---------------------------------------------------------------------------------------------- several writers


def test_threads_writing_at_once_lose_no_label(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    n_threads, n_each = 6, 25
    start = threading.Barrier(n_threads)
    errors = []

    def write(t: int) -> None:
        own = LabelStore(store.path) if t % 2 else store  # a shared store and stores of their own
        start.wait()
        try:
            for i in range(n_each):
                own.set(f"run-{t}", KEYS[i], ("normal", "anomaly", "unsure")[i % 3], note=f"t{t} i{i}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(store.labels(None)) == n_threads * n_each
    assert all(store.get(f"run-{t}", KEYS[i]).note == f"t{t} i{i}" for t in range(n_threads) for i in range(n_each))


def _process_writer(path: str, worker: int, n: int, start, use_set_many: bool) -> None:
    """One process: wait for the others, then write ``n`` labels of the same run, one transaction each (or three
    set_many batches), some of them to keys the other processes also write."""
    store = LabelStore(path)
    start.wait()
    if use_set_many:
        items = [(KEYS[100 * worker + i], "anomaly", f"w{worker}") for i in range(n)]
        for chunk in (items[: n // 3], items[n // 3: 2 * n // 3], items[2 * n // 3:]):
            store.set_many("shared-run", chunk)
    else:
        for i in range(n):
            store.set("shared-run", KEYS[100 * worker + i], "normal", note=f"w{worker}")
    store.set("shared-run", KEYS[599], "unsure", note=f"w{worker}")  # every process writes this one too


@pytest.mark.parametrize("use_set_many", [False, True])
def test_processes_writing_at_once_lose_no_label(tmp_path, use_set_many):
    """Several processes (spawned, so nothing is shared but the file) write at the same moment into a new file."""
    ctx = mp.get_context("spawn")
    path = str(tmp_path / "labels.sqlite")
    k, n = 4, 30
    start = ctx.Barrier(k)
    procs = [ctx.Process(target=_process_writer, args=(path, w, n, start, use_set_many)) for w in range(k)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * k
    store = LabelStore(path)
    got = {r.image_key: r for r in store.labels("shared-run")}
    assert len(got) == k * n + 1
    for w in range(k):
        assert all(got[KEYS[100 * w + i]].note == f"w{w}" for i in range(n))
    assert got[KEYS[599]].note in {f"w{w}" for w in range(k)}
    assert store.schema_version == 2


# ------------------------------------------------------------------------------------------------ damaged files


def _filled(path) -> LabelStore:
    store = LabelStore(path)
    store.set_many(RUN, [(KEYS[i], "normal", "n" * 200) for i in range(500)])
    return store


@pytest.mark.parametrize("damage", ["random", "truncated", "zeroed-middle"])
def test_a_damaged_database_gives_one_clear_error(tmp_path, damage):
    path = tmp_path / "labels.sqlite"
    _filled(path)
    assert not (tmp_path / "labels.sqlite-wal").exists()  # the last connection closed: all in the main file
    data = path.read_bytes()
    assert len(data) > 16 * 4096
    if damage == "random":
        data = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = data[:8192] + bytes(len(data) - 16384) + data[-8192:]
    path.write_bytes(data)
    store = LabelStore(path)
    for action in (lambda: store.labels(RUN), lambda: store.set(RUN, KEYS[0], "anomaly"),
                   lambda: store.counts(RUN), lambda: store.import_csv(io.StringIO(f"run_id,image_key,label\n{RUN},{KEYS[1]},normal\n"))):
        with pytest.raises(LabelStoreError) as err:
            action()
        assert str(path) in str(err.value) and "damaged" in str(err.value)
    assert path.read_bytes() == data  # left as it was, for whoever wants to look at it


def test_a_damaged_labels_file_breaks_nothing_else_in_the_runs_folder(tmp_path):
    from doc_core.model.backbones import BackboneConfig
    from doc_core.model.detector import ScorerConfig
    from doc_core.model.training import TrainConfig
    from doc_core.workflow import runs

    run = tmp_path / RUN
    run.mkdir()
    doc = {"format": runs.RUN_FORMAT, "format_version": runs.RUN_FORMAT_VERSION, "run_id": RUN, "name": "demo",
           "created": "2025-01-01T12:00:00+00:00",
           "config": {"backbone": BackboneConfig(name="tiny", input_size=32).to_dict(),
                      "train": TrainConfig().to_dict(), "scorer": ScorerConfig().to_dict()},
           "dataset": {"kind": "synthetic"}, "auc": None, "average_precision": None, "n_test": 0, "steps": 1,
           "steps_total": 1, "stopped_early": False, "train_seconds": 1.0, "total_seconds": 1.0,
           "default_threshold": 1.0}
    (run / "run.json").write_text(json.dumps(doc))
    (tmp_path / "labels.sqlite").write_bytes(os.urandom(50_000))
    with pytest.raises(LabelStoreError, match="labels.sqlite"):
        LabelStore(runs_dir=tmp_path).labels(RUN)
    assert [r.run_id for r in runs.list_runs(tmp_path)] == [RUN]
    assert runs.list_broken_runs(tmp_path) == []
    assert runs.get_run(RUN, tmp_path).name == "demo"
    other = LabelStore(tmp_path / "elsewhere.sqlite")  # another labels file is unaffected
    other.set(RUN, KEYS[0], "normal")
    assert other.counts(RUN)["normal"] == 1


def test_a_folder_in_place_of_the_database_is_refused(tmp_path):
    (tmp_path / "labels.sqlite").mkdir()
    with pytest.raises(LabelStoreError, match="not a regular file"):
        LabelStore(tmp_path / "labels.sqlite").labels(RUN)


def test_the_module_imports_no_tensorflow_and_loads_no_code():
    import subprocess
    import sys

    code = ("import sys\nimport doc_core.workflow.labels\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn', 'pickle')"
            " and m != 'pickle'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    source = open(L.__file__, encoding="utf-8").read()
    assert "import pickle" not in source and "load_extension" not in source
