"""What a test suite using modelfix looks like: the demo (``make demo``) runs this file.

The repository's ``model-lock.toml`` pins one model, ``tiny`` (a tiny random
llama model, so its text is gibberish: these tests check behaviour, not wit).
Run it yourself with ``pytest examples/test_tiny_model.py`` once ``modelfix sync`` has fetched it
(``examples/test_snapshot.py``, the snapshot test, needs a recording first: see its docstring).
"""

import pytest


@pytest.mark.model("tiny")
def test_completes_a_prompt(llama):
    out = llama("Once upon a time", max_tokens=8, temperature=0)
    assert out["choices"][0]["text"]
    assert out["usage"]["completion_tokens"] <= 8


def test_unmarked_tests_get_the_only_model(llama, modelfix):
    # Same model, same settings: the pool hands back the handle it already holds.
    assert llama is modelfix.load("tiny")


@pytest.mark.model("tiny", seed=1)
def test_sampling_repeats_with_a_fixed_seed(llama):
    # The fixture resets the handle before each test (KV cache and seed), so a
    # sampled completion is the same whichever tests ran before this one.
    first = llama("Hello", max_tokens=8, temperature=0.8)["choices"][0]["text"]
    llama.reset()
    llama.set_seed(1)
    assert llama("Hello", max_tokens=8, temperature=0.8)["choices"][0]["text"] == first


@pytest.mark.model("tiny", n_ctx=256)
def test_marker_settings_reach_llama_cpp(llama):
    assert llama.n_ctx() == 256


def test_files_match_their_pins(modelfix):
    path = modelfix.path("tiny")
    pin = modelfix.lockfile.entry("tiny").model_files[0]
    assert path.name == pin.path
    assert path.stat().st_size == pin.size
