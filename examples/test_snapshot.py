"""A snapshot test: what the model answers is recorded once, and every later answer is compared.

The first run fails: nothing is recorded yet, and the failure says how to record.
``pytest --modelfix-snapshot-update`` records each comparison into
``__snapshots__/test_snapshot.modelfix.toml`` beside this file, with the model's pin, the
settings and the llama.cpp runtime that produced it; later runs compare with it, and a mismatch
says what changed since the recording.

The tiny model is random, and a random model may answer differently on another CPU, so no
recording is committed here: ``make demo`` copies this file into ``.demo/snapshots/`` and runs it
three times there (unrecorded, recording, compared).
"""

import pytest


@pytest.mark.model("tiny", n_ctx=256)
def test_the_answer_is_recorded(llama, model_snapshot):
    out = llama("The capital of France is", max_tokens=12, temperature=0)
    assert model_snapshot == out["choices"][0]["text"]  # a str
    assert model_snapshot == out["usage"]  # or JSON-able data: a dict, a list, a whole completion
