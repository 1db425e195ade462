"""Shared fixtures: the tiny random model (fast) and the embedded SmolLM2-135M (cached safetensors, a few seconds)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    from dftnb.lab.models import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def embedded():
    from dftnb.lab.models import load_model

    return load_model("embedded")
