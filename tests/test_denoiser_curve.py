"""The denoiser curve's labels: the registry's (:mod:`dftnb.methods`), SFT printed as "CE", and the committed table
regenerated from the committed rows byte for byte."""

import shutil

from dftnb.lab import denoiser_curve
from dftnb.methods import METHOD_REGISTRY


def test_labels_are_the_registry_s_with_ce_for_sft():
    assert denoiser_curve.label("sft") == "CE" and denoiser_curve.label("sft+prefix") == "CE + prefix loss"
    assert denoiser_curve.label("dft_forward_kl+bucket") == "DFT (forward KL) + bucket tail"
    for name, m in METHOD_REGISTRY.items():
        assert denoiser_curve.label(name) == denoiser_curve.DISPLAY.get(name, m.label)


def test_the_committed_table_is_regenerated_unchanged(tmp_path):
    committed = denoiser_curve.RESULTS
    shutil.copy(committed / "invariant_curve.csv", tmp_path / "invariant_curve.csv")
    denoiser_curve.report(tmp_path)
    assert (tmp_path / "invariant_curve.md").read_bytes() == (committed / "invariant_curve.md").read_bytes()
