"""File choice from a repository listing, as llama.cpp's ``-hf`` makes it."""

from __future__ import annotations

import pytest

from modelfix.errors import SourceError
from modelfix.selection import model_groups, select, select_file, split_siblings

LISTING = [
    ".gitattributes",
    "README.md",
    "Model-Q4_K_M.gguf",
    "Model-Q8_0.gguf",
    "Model-IQ2_XS.gguf",
    "Q6_K/Model-Q6_K-00001-of-00002.gguf",
    "Q6_K/Model-Q6_K-00002-of-00002.gguf",
    "Model-F32.gguf.part1of2",
    "Model-F32.gguf.part2of2",
    "Model-bf16.gguf-split-b",
    "Model-bf16.gguf-split-a",
    "mmproj-Model-f16.gguf",
    "mmproj-Model-Q8_0.gguf",
    "Model.imatrix.gguf",
    "mtp-Model-Q4_K_M.gguf",
    "preset.ini",
]


@pytest.mark.parametrize(
    ("tag", "parts"),
    [
        (None, ("Model-Q4_K_M.gguf",)),  # default: Q4_K_M first
        ("q8_0", ("Model-Q8_0.gguf",)),  # case-insensitive
        ("IQ2_XS", ("Model-IQ2_XS.gguf",)),
        ("Q6_K", ("Q6_K/Model-Q6_K-00001-of-00002.gguf", "Q6_K/Model-Q6_K-00002-of-00002.gguf")),
        ("F32", ("Model-F32.gguf.part1of2", "Model-F32.gguf.part2of2")),
        ("BF16", ("Model-bf16.gguf-split-a", "Model-bf16.gguf-split-b")),
    ],
)
def test_tag_picks_the_model_llama_cpp_would(tag, parts):
    assert select(LISTING, tag).model.parts == parts


def test_never_models_are_not_candidates():
    keys = [g.key for g in model_groups(LISTING)]
    assert not [k for k in keys if "mmproj" in k or "imatrix" in k or k.startswith("mtp-")]


def test_legacy_parts_join_into_one_file():
    group = select(LISTING, "F32").model
    assert group.join == "Model-F32.gguf"


def test_default_falls_back_to_q8_then_first():
    assert select(["b-Q8_0.gguf", "a-Q5_K_M.gguf"], None).model.first == "b-Q8_0.gguf"
    assert select(["b-Q5_0.gguf", "a-Q5_K_M.gguf"], None).model.first == "b-Q5_0.gguf"


def test_tag_needs_a_separator_after_it():
    # "Q4_K" must not match "Q4_K_M": the tag is followed by '.' or '-' only.
    with pytest.raises(SourceError, match=r"matches no model file.*Available: m-Q4_K_M\.gguf"):
        select(["m-Q4_K_M.gguf"], "Q4_K")


def test_ambiguous_tag_lists_the_candidates():
    with pytest.raises(SourceError) as info:
        select(["a/m-Q4_0.gguf", "b/m-Q4_0.gguf"], "Q4_0", repo="org/x")
    assert "a/m-Q4_0.gguf" in str(info.value) and "b/m-Q4_0.gguf" in str(info.value)
    assert "hf://org/x/" in str(info.value)


def test_split_parts_of_one_set_are_not_ambiguous():
    sel = select(["m-Q4_0-00002-of-00002.gguf", "m-Q4_0-00001-of-00002.gguf"], "Q4_0")
    assert sel.model.parts == ("m-Q4_0-00001-of-00002.gguf", "m-Q4_0-00002-of-00002.gguf")


@pytest.mark.parametrize(
    ("listing", "tag", "expected"),
    [
        (LISTING, "Q8_0", "mmproj-Model-Q8_0.gguf"),  # exact tag match
        (LISTING, "Q4_K_M", "mmproj-Model-Q8_0.gguf"),  # closest bit width: 8 is nearer 4 than 16
        (LISTING, "F32", "mmproj-Model-f16.gguf"),  # 16 is nearest 32
        (
            ["sub/m-Q4_0.gguf", "mmproj-f16.gguf", "sub/mmproj-f32.gguf"],
            "Q4_0",
            "sub/mmproj-f32.gguf",
        ),  # deepest shared folder
        (["m-Q4_0.gguf"], "Q4_0", None),
        # f16 and bf16 are both 16 bits: f16 is the one for F16 and for the nearest-width fallback
        (["m-F16.gguf", "mmproj-m-bf16.gguf", "mmproj-m-f16.gguf"], "F16", "mmproj-m-f16.gguf"),
        (["m-Q4_K_M.gguf", "mmproj-BF16.gguf", "mmproj-F16.gguf", "mmproj-F32.gguf"], None, "mmproj-F16.gguf"),
        (["m-BF16.gguf", "mmproj-m-bf16.gguf", "mmproj-m-f16.gguf"], "BF16", "mmproj-m-bf16.gguf"),
    ],
)
def test_mmproj_choice(listing, tag, expected):
    assert select(listing, tag).mmproj == expected


def test_preset_only_at_root():
    assert select(LISTING, None).preset == "preset.ini"
    assert select(["m-Q4_0.gguf", "sub/preset.ini"], None).preset is None


def test_explicit_file_brings_its_split_set():
    group = select_file(LISTING, "Q6_K/Model-Q6_K-00002-of-00002.gguf")
    assert len(group.parts) == 2


def test_explicit_missing_file_lists_models():
    with pytest.raises(SourceError, match=r"does not exist.*Model-Q4_K_M\.gguf"):
        select_file(LISTING, "nope.gguf")


def test_no_gguf_at_all():
    with pytest.raises(SourceError, match="no GGUF model files in org/x"):
        select(["README.md"], None, repo="org/x")


def test_split_siblings_probe():
    present = {"d/m-00001-of-00003.gguf", "d/m-00002-of-00003.gguf", "d/m-00003-of-00003.gguf"}
    assert split_siblings("d/m-00002-of-00003.gguf", present.__contains__) == sorted(present)
    assert split_siblings("d/single.gguf", present.__contains__) == ["d/single.gguf"]


def test_tag_is_a_substring_match_as_in_llama_cpp():
    # llama.cpp matches "F16" inside "BF16" too; two models matching is an error here.
    with pytest.raises(SourceError, match="matches 2 different models"):
        select(["m-F16.gguf", "m-BF16.gguf"], "F16")


def test_an_explicit_file_that_is_not_gguf_is_refused():
    with pytest.raises(SourceError, match=r"'README\.md' in org/x is not a GGUF model file.*Model files there: "):
        select_file(["README.md", "config.json", "m-Q4_0.gguf"], "README.md", repo="org/x")


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        (
            ["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf"],
            r"org/evil has two files for part 1 of 2 .*'m-Q4_K_M-00001-of-00002.gguf'",
        ),
        (  # other scripts' digits are not part numbers: the odd name is a model of its own, and the tag ambiguous
            ["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-０００01-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf"],
            r"tag 'Q4_K_M' matches 2 different models in org/evil",
        ),
    ],
    ids=["listed-twice", "fullwidth-digits"],
)
def test_a_split_set_with_two_part_1_files_is_refused(listing, message):
    with pytest.raises(SourceError, match=message):
        select(listing, "Q4_K_M", repo="org/evil")


def test_a_split_set_missing_a_part_is_refused():
    with pytest.raises(SourceError, match=r"split set m-Q4_K_M-0000K-of-00003.gguf in org/evil lacks part 2 of 3"):
        select(["m-Q4_K_M-00001-of-00003.gguf", "m-Q4_K_M-00003-of-00003.gguf"], "Q4_K_M", repo="org/evil")
