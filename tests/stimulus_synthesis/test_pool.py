"""Candidate pools from files and folders, and the default offline pool."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stimulus_synthesis import PoolError, load_pool, split_sentences

from ..support.netutil import ROOT


def test_text_csv_tsv_and_folder(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("The dog barked at the mail carrier.\n\n  The dog   barked at the mail carrier. \nToo short.\n"
                   "A \u201cquoted\u201d word \u2014 and a dash here.\n", encoding="utf-8")  # fmt: skip
    pool = load_pool(txt)
    assert pool.sentences == ["The dog barked at the mail carrier.", 'A "quoted" word - and a dash here.']
    assert (pool.read, pool.duplicates, pool.filtered) == (4, 1, 1)
    csv_ = tmp_path / "p.csv"
    csv_.write_text('id,text\n1,"First sentence of the table, with a comma."\n2,Second sentence of the table.\n')
    assert len(load_pool(csv_, column="text")) == 2
    tsv = tmp_path / "p.tsv"
    tsv.write_text("sentence\tx\nA sentence in a TSV file.\t1\n")
    assert load_pool(tsv).sentences == ["A sentence in a TSV file."]
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("It rained all day. The river rose over its banks! Did the bridge hold?")
    (folder / "sub" / "b.txt").write_text("Farmers moved the cattle to higher ground.")
    assert len(load_pool(folder)) == 4


def test_bad_pools(tmp_path):
    cases = {
        "missing": (tmp_path / "nope.txt", "does not exist"),
        "empty": (tmp_path / "empty.txt", "no usable sentences"),
        "repeated": (tmp_path / "rep.txt", "1 distinct sentences"),
        "binary": (tmp_path / "bin.txt", "not UTF-8 text (byte 5"),
        "column": (tmp_path / "c.csv", "no column 'sentence'"),
        "folder": (tmp_path / "dir", "holds no .txt files"),
    }
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "rep.txt").write_text("The same sentence again and again.\n" * 50)
    (tmp_path / "bin.txt").write_bytes(b"Hello\xff\xfe world, bytes.\n")
    (tmp_path / "c.csv").write_text("text\nA sentence in a column.\n")
    (tmp_path / "dir").mkdir()
    for name, (path, message) in cases.items():
        if name == "repeated":
            assert load_pool(path).summary().startswith("1 distinct sentences (50 read, 49 duplicates")
            continue
        with pytest.raises(PoolError, match=re.escape(message)):
            load_pool(path)


def test_sentence_splitter():
    assert split_sentences('One here. Two there! "Three?" Four') == ["One here.", "Two there!", '"Three?" Four']


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(),
                    reason="Debian's wordnet-base is not installed (.ci/setup installs it)")  # fmt: skip
def test_corpus_build_command(tmp_path):
    out = tmp_path / "pool.txt"
    proc = subprocess.run([sys.executable, "-m", "control_loop.cli", "corpus", "build", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pool = load_pool(out, min_words=5, max_words=40)
    assert len(pool) > 100_000 and pool.duplicates == 0
    assert "lee: " in proc.stdout and "wordnet-glosses: " in proc.stdout and "0 duplicates" not in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "control_loop.cli", "corpus", "info", str(tmp_path / "x.txt")],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
