"""`make publish` writes the measured run times: each published chapter's ``<!-- runtime -->`` text and the README's
``<!-- runtime:NN -->`` / ``<!-- runtime:total -->`` texts come from the run's ``timings-default.csv``, rounded up to
whole minutes; only Markdown changes, so no chapter turns stale, and a missing marker is named without losing the
outputs already written."""

import json

import pytest

from dftnb.lab import publish as P
from dftnb.lab.runner import write_timings

INTRO = "# 00\n\n(the chapter runs in <!-- runtime -->about 3 min<!-- /runtime --> on 2 cores, default profile)\n"


def _chapter(intro=INTRO, outputs=()):
    meta = {"papermill": {"parameters": {"profile": "default"}, "end_time": "2026-12-07T14:28:29", "exception": None}}
    return {"cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": intro.splitlines(keepends=True)},
                      {"cell_type": "code", "id": "a", "metadata": {"tags": []}, "source": "x = 1",
                       "outputs": list(outputs), "execution_count": 1 if outputs else None}],
            "metadata": meta if outputs else {}, "nbformat": 4, "nbformat_minor": 5}


def _run(tmp_path, seconds, intros):
    """Committed chapters with the given intros, their executed copies and the runner's timings CSV."""
    books, out = tmp_path / "notebooks", tmp_path / "outputs"
    books.mkdir()
    out.mkdir()
    printed = {"output_type": "stream", "name": "stdout", "text": "1\n"}
    for name, intro in intros.items():
        (books / name).write_text(json.dumps(_chapter(intro)))
        (out / name).write_text(json.dumps(_chapter(intro, [printed])))
    write_timings(out / "timings-default.csv",
                  [{"notebook": name, "profile": "default", "seconds": s} for name, s in seconds.items()])
    readme = tmp_path / "README.md"
    readme.write_text("| 00 | tour | <!-- runtime:00 -->0.5-2 min<!-- /runtime --> |\n"
                      "| 01 | targets | <!-- runtime:01 -->3-4 min<!-- /runtime --> |\n"
                      "| | total | <!-- runtime:total -->?<!-- /runtime --> |\n")
    return books, out, readme


def _intro(path):
    return "".join(json.loads(path.read_text())["cells"][0]["source"])


def test_runtime_text_rounds_up_to_whole_minutes():
    assert P.runtime_text(0) == P.runtime_text(59.9) == "under 1 min"
    assert P.runtime_text(60) == "about 1 min" and P.runtime_text(60.1) == "about 2 min"
    assert P.runtime_text(181.0) == "about 4 min" and P.runtime_text(1560) == "about 26 min"
    with pytest.raises(ValueError, match="finite"):
        P.runtime_text(float("nan"))


def test_publish_writes_the_measured_run_times_without_making_a_chapter_stale(tmp_path):
    names = ("00_tour.ipynb", "01_targets.ipynb")
    books, out, readme = _run(tmp_path, {names[0]: 42.3, names[1]: 181.0}, dict.fromkeys(names, INTRO))
    assert P.publish(out, books, machine="m", readme=readme) == list(names)
    assert "<!-- runtime -->under 1 min<!-- /runtime --> on 2 cores" in _intro(books / names[0])
    assert "<!-- runtime -->about 4 min<!-- /runtime --> on 2 cores" in _intro(books / names[1])
    assert _intro(books / names[1]).startswith("# 00\n\n(the chapter runs in ")  # the rest of the cell as written
    nb = json.loads((books / names[1]).read_text())
    assert nb["metadata"]["dftnb"]["outputs"]["code_sha256"] == P.code_digest(_chapter())  # Markdown is not code
    assert P.stale_chapters(books) == {}
    text = readme.read_text()
    assert "<!-- runtime:00 -->under 1 min<!-- /runtime -->" in text
    assert "<!-- runtime:01 -->about 4 min<!-- /runtime -->" in text
    assert "<!-- runtime:total -->about 4 min<!-- /runtime -->" in text  # 223.3 s in all
    before = {p.name: p.read_text() for p in (*books.iterdir(), readme)}
    P.publish(out, books, machine="m", readme=readme)  # publishing again changes nothing
    assert {p.name: p.read_text() for p in (*books.iterdir(), readme)} == before


def test_the_total_waits_for_every_chapter_the_readme_marks(tmp_path):
    text, missing = P.set_readme_runtimes("<!-- runtime:00 -->x<!-- /runtime --> <!-- runtime:01 -->y<!-- /runtime -->"
                                          " <!-- runtime:total -->z<!-- /runtime -->", {"00": 61.0, "02": 5.0})
    assert text == ("<!-- runtime:00 -->about 2 min<!-- /runtime --> <!-- runtime:01 -->y<!-- /runtime -->"
                    " <!-- runtime:total -->z<!-- /runtime -->")
    assert missing == {"02"}


def test_a_chapter_without_the_marker_is_named_and_its_outputs_are_kept(tmp_path):
    names = ("00_tour.ipynb", "01_targets.ipynb")
    plain = "# 01\n\n(the chapter runs in about 3 min on 2 cores)\n"
    books, out, readme = _run(tmp_path, {names[0]: 100.0, names[1]: 200.0}, {names[0]: INTRO, names[1]: plain})
    with pytest.raises(P.MissingRuntimeMarker, match=r"01_targets\.ipynb \(no <!-- runtime -->") as err:
        P.publish(out, books, machine="m", readme=readme)
    assert "00_tour.ipynb (" not in str(err.value) and "make publish" in str(err.value)
    for name in names:  # both chapters got their outputs; the one with a marker its run time too
        nb = json.loads((books / name).read_text())
        assert nb["cells"][1]["outputs"][1]["text"] == "1\n" and "dftnb" in nb["metadata"]
    assert "<!-- runtime -->about 2 min<!-- /runtime -->" in _intro(books / names[0])
    assert _intro(books / names[1]) == plain
    assert "<!-- runtime:total -->about 5 min<!-- /runtime -->" in readme.read_text()


def test_a_readme_without_a_chapter_marker_is_named(tmp_path):
    name = "02_training.ipynb"
    books, out, readme = _run(tmp_path, {name: 30.0}, {name: INTRO})
    with pytest.raises(P.MissingRuntimeMarker, match=r"README\.md \(no <!-- runtime:02 -->"):
        P.publish(out, books, machine="m", readme=readme)
    assert "<!-- runtime -->under 1 min<!-- /runtime -->" in _intro(books / name)
