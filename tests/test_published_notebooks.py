"""The committed chapters carry the default profile's outputs (``make run && make publish``): none holds an error,
none is stale (its code changed since its outputs were made), they stay small, and the publishing itself copies
outputs by cell id and records the code they came from."""

import json
from pathlib import Path

import pytest

from dftnb.lab import publish as P

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _nb(cells, profile=None):
    meta = {} if profile is None else {"papermill": {"parameters": {"profile": profile}}}
    return {"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


def _code(cell_id, source, outputs=(), tags=()):
    return {"cell_type": "code", "id": cell_id, "metadata": {"tags": list(tags)}, "source": source,
            "outputs": list(outputs), "execution_count": 1 if outputs else None}


def test_publish_copies_outputs_by_cell_id_and_a_code_change_makes_a_chapter_stale(tmp_path):
    books, out = tmp_path / "notebooks", tmp_path / "outputs"
    books.mkdir()
    out.mkdir()
    figure = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    source = _nb([{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# 00"},
                  _code("a", "profile = 'smoke'", tags=["parameters"]), _code("b", "plot()")])
    executed = _nb([source["cells"][0], source["cells"][1], _code("inj", "profile = 'default'",
                                                                  tags=["injected-parameters"]),
                    _code("b", "plot()", [figure])], profile="default")
    executed["metadata"]["papermill"].update(end_time="2026-12-07T14:28:29", exception=None)
    (books / "00_x.ipynb").write_text(json.dumps(source))
    (out / "00_x.ipynb").write_text(json.dumps(executed))
    assert P.stale_chapters(books) == {"00_x.ipynb": "carries no published outputs"}

    assert P.publish(out, books, machine="test machine", readme=None) == ["00_x.ipynb"]
    nb = json.loads((books / "00_x.ipynb").read_text())
    assert [c["id"] for c in nb["cells"]] == ["m", "a", "b"]  # the injected cell stays out
    assert nb["cells"][2]["outputs"] == [figure] and nb["cells"][2]["source"] == "plot()"
    header = nb["cells"][1]["outputs"][0]["text"]
    assert header.startswith("Outputs of the default profile, run on ") and "test machine" in header
    assert P.stale_chapters(books) == {}

    nb["cells"][2]["source"] = "plot(bigger=True)"  # an edit after publishing
    (books / "00_x.ipynb").write_text(json.dumps(nb))
    assert "its code changed" in P.stale_chapters(books)["00_x.ipynb"]
    with pytest.raises(ValueError, match="executed from other code"):  # the old run cannot be published over it
        P.publish(out, books, machine="test machine", readme=None)
    executed["metadata"]["papermill"]["parameters"]["profile"] = "smoke"
    (out / "00_x.ipynb").write_text(json.dumps(executed))
    with pytest.raises(ValueError, match="profile 'smoke'"):
        P.publish(out, books, machine="test machine", readme=None)
    executed["metadata"]["papermill"]["end_time"] = None  # still running (or killed): not published, not refused
    (out / "00_x.ipynb").write_text(json.dumps(executed))
    with pytest.raises(FileNotFoundError, match="no executed chapter"):
        P.publish(out, books, machine="test machine", readme=None)


def test_no_committed_chapter_carries_stale_or_failed_outputs():
    """Every chapter that carries published outputs got them from its current code, and none holds an error; a
    chapter not published yet carries none (``make stale`` lists both kinds)."""
    assert CHAPTERS
    changed = {name: why for name, why in P.stale_chapters().items() if "code changed" in why}
    assert changed == {}, "refresh the outputs: `make run && make publish`"
    published = 0
    for path in CHAPTERS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        outputs = [o for c in code for o in c.get("outputs", [])]
        if "dftnb" not in nb["metadata"]:
            assert outputs == [], f"{path.name} carries outputs that `make publish` did not write"
            continue
        published += 1
        assert not [o for o in outputs if o["output_type"] == "error"], path.name
        assert all(c.get("execution_count") for c in code), f"{path.name}: a code cell did not run"
        assert outputs[0]["text"].startswith("Outputs of the default profile, run on "), path.name
    assert published >= 1  # chapter 00 at least: a reader sees the tour's figures without running it
    assert sum(p.stat().st_size for p in CHAPTERS) < 6 * 2**20  # a few MB in all
