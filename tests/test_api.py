"""The public API: ``import dftnb`` gives the names a user needs, cheaply, and the README's example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import dftnb

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves_and_is_listed():
    for name in dftnb.__all__:
        assert getattr(dftnb, name) is not None, name
    assert {"SparseTarget", "DFTTrainer", "DFTConfig", "build_trainer", "SparseTargetCollator", "dft_loss",
            "from_reference_model", "reverse_kl", "DynamicTemperatureLogitsProcessor"} <= set(dir(dftnb))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dftnb.nope  # noqa: B018


def test_import_dftnb_loads_neither_torch_nor_transformers():
    code = "import sys, dftnb; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def readme_example() -> str:
    blocks = re.findall(r"## DFT in your own training script\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README's section 'DFT in your own training script' lost its Python block"
    return blocks[0]


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. "records no tokenizer hash": the plain path is checked
def test_the_readme_example_runs_on_a_tiny_model(tmp_path, monkeypatch, tiny):
    """The README's snippet, character for character, except the model it names: a tiny random Llama saved to disk
    (the same tokenizer), and 2 training steps instead of 10."""
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    code = readme_example()
    assert code.count('name = "HuggingFaceTB/SmolLM2-135M-Instruct"') == 1 and code.count("max_steps=10") == 1
    assert len(code.strip().splitlines()) <= 15
    code = code.replace('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(str(tmp_path / "tiny")))
    code = code.replace("max_steps=10", "max_steps=2, use_cpu=True, disable_tqdm=True")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    state = namespace["trainer"].state
    assert state.global_step == 2 and 0 < state.log_history[-1]["train_loss"] < float("inf")
    assert namespace["targets"].column_names[:2] == ["input_ids", "labels"]
    assert {"target_ids", "target_logprobs", "target_tail_mass"} <= set(namespace["targets"].column_names)
