import csv

import pytest

from dftnb.lab import runner


def test_notebooks_are_numbered_and_have_a_parameters_cell():
    import nbformat

    found = runner.notebooks()
    assert [nb.name[:2] for nb in found] == sorted(nb.name[:2] for nb in found)
    assert found[0].name == "00_tour.ipynb"
    for path in found:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        assert 'profile = "default"' in tagged[0].source and "out_dir" in tagged[0].source
        assert nb.metadata["kernelspec"]["name"] == runner.KERNEL


def test_only_selects_by_number_and_rejects_unknown():
    assert [nb.name[:2] for nb in runner.notebooks(["0"])] == ["00"]
    with pytest.raises(SystemExit):
        runner.notebooks(["99"])


def test_setup_chapter_rejects_unknown_profile(tmp_path):
    with pytest.raises(ValueError, match="smoke"):
        runner.setup_chapter("fast", tmp_path)
    assert runner.setup_chapter("smoke", tmp_path) == tmp_path


def test_timings_are_merged_not_overwritten(tmp_path):
    path = tmp_path / "timings-default.csv"
    runner.write_timings(path, [{"notebook": "00_a.ipynb", "profile": "default", "seconds": 1.0},
                                {"notebook": "01_b.ipynb", "profile": "default", "seconds": 2.0}])
    runner.write_timings(path, [{"notebook": "01_b.ipynb", "profile": "default", "seconds": 5.0}])
    with path.open() as fh:
        rows = {r["notebook"]: float(r["seconds"]) for r in csv.DictReader(fh)}
    assert rows == {"00_a.ipynb": 1.0, "01_b.ipynb": 5.0}
