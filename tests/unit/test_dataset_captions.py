"""Caption files and kohya caption processing (keep tokens, |||, shuffle)."""

import random

import pytest

from lora_trainer.dataset.captions import process_caption, read_caption, tag_frequency

SEP = "|||"


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- read_caption

def test_reads_first_line_stripped(tmp_path):
    write(tmp_path / "a.txt", b"  sks dog, sitting  \nsecond line\n")
    text, problem = read_caption(tmp_path / "a.png", ".txt")
    assert text == "sks dog, sitting"
    assert problem.severity == "note" and problem.kind == "multiline" and "a.txt" in problem.message


def test_first_non_empty_line_is_used(tmp_path):
    write(tmp_path / "a.txt", b"\n   \nsks dog\n")
    assert read_caption(tmp_path / "a.png", ".txt") == ("sks dog", None)


def test_utf8_bom_is_stripped(tmp_path):
    write(tmp_path / "a.caption", "\ufeffcafé, naïve".encode("utf-8"))
    assert read_caption(tmp_path / "a.png", ".caption") == ("café, naïve", None)


def test_cp1252_caption_is_a_warning_not_a_crash(tmp_path):
    write(tmp_path / "a.txt", "café, naïve".encode("cp1252"))
    text, problem = read_caption(tmp_path / "a.png", ".txt")
    assert text is None
    assert problem.severity == "warning" and problem.kind == "not_utf8"
    assert "a.txt" in problem.message and "UTF-8" in problem.fix


def test_zero_byte_caption_file_is_treated_as_missing(tmp_path):
    write(tmp_path / "a.txt", b"")
    text, problem = read_caption(tmp_path / "a.png", ".txt")
    assert text is None and problem.kind == "empty" and "a.txt" in problem.message


def test_blank_caption_file_is_an_empty_caption_like_kohya(tmp_path):
    # kohya: lines[0].strip() -> "" (the N_empty folders of the three-caption recipe rely on it)
    write(tmp_path / "a.txt", b"  \n\n")
    text, problem = read_caption(tmp_path / "a.png", ".txt")
    assert text == "" and problem.kind == "blank" and problem.severity == "note"


def test_missing_caption_gives_nothing(tmp_path):
    assert read_caption(tmp_path / "a.png", ".txt") == (None, None)


@pytest.mark.parametrize("wanted, present", [(".caption", ".txt"), (".txt", ".caption")])
def test_other_extension_is_a_noted_fallback(tmp_path, wanted, present):
    write(tmp_path / f"a{present}", b"from fallback")
    text, problem = read_caption(tmp_path / "a.png", wanted)
    assert text == "from fallback"
    assert problem.severity == "note" and problem.kind == "fallback_extension"
    assert present in problem.fix


def test_requested_extension_wins_over_fallback(tmp_path):
    write(tmp_path / "a.txt", b"txt")
    write(tmp_path / "a.caption", b"caption")
    assert read_caption(tmp_path / "a.png", ".caption") == ("caption", None)
    assert read_caption(tmp_path / "a.png", "txt") == ("txt", None)  # missing dot tolerated


def test_stem_with_dots(tmp_path):
    write(tmp_path / "img.v2.txt", b"dotted")
    assert read_caption(tmp_path / "img.v2.png", ".txt") == ("dotted", None)


# ---------------------------------------------------------------- process_caption

def test_no_shuffle_without_separator_is_unchanged():
    assert process_caption("sks dog, sitting,  grass") == "sks dog, sitting,  grass"


def test_separator_never_reaches_the_text_with_shuffle_off():
    assert process_caption("sks dog ||| sitting, grass") == "sks dog, sitting, grass"
    assert process_caption("sks dog|||sitting,grass") == "sks dog, sitting, grass"
    assert process_caption("sks dog ||| sitting ||| masterpiece") == "sks dog, sitting, masterpiece"
    assert process_caption("a ||| b ||| c ||| d") == "a, b, c, d"
    assert process_caption("sks dog |||") == "sks dog"


@pytest.mark.parametrize("caption", [
    "sks dog ||| sitting, grass, blue sky, tree",
    "sks dog, red collar ||| sitting, grass, blue sky ||| masterpiece, best quality",
    "a ||| b ||| c ||| d, e",
    "||| only, flexible, tags",
])
def test_separator_never_reaches_the_text_with_shuffle_on(caption):
    for seed in range(30):
        out = process_caption(caption, shuffle_caption=True, rng=random.Random(seed))
        assert SEP not in out
        assert sorted(out.split(", ")) == sorted(
            t.strip() for t in caption.replace(SEP, ",").split(",") if t.strip())


def test_fixed_part_stays_first_and_suffix_last():
    caption = "sks dog, red collar ||| sitting, grass, blue sky, tree ||| masterpiece"
    orders = set()
    for seed in range(40):
        out = process_caption(caption, shuffle_caption=True, keep_tokens=3, rng=random.Random(seed))
        tokens = out.split(", ")
        assert tokens[:2] == ["sks dog", "red collar"]  # keep_tokens ignored when ||| is present
        assert tokens[-1] == "masterpiece"
        assert set(tokens[2:-1]) == {"sitting", "grass", "blue sky", "tree"}
        orders.add(out)
    assert len(orders) > 5


def test_keep_tokens_without_separator():
    caption = "sks dog, 1girl, sitting, grass, tree, sky"
    for seed in range(20):
        out = process_caption(caption, shuffle_caption=True, keep_tokens=2, rng=random.Random(seed))
        assert out.split(", ")[:2] == ["sks dog", "1girl"]
        assert sorted(out.split(", ")) == sorted(caption.split(", "))


def test_shuffle_is_deterministic_for_a_seeded_rng():
    caption = "sks ||| a, b, c, d, e, f, g"
    first = [process_caption(caption, shuffle_caption=True, rng=random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    rng_a, rng_b = random.Random(3), random.Random(3)
    seq_a = [process_caption(caption, shuffle_caption=True, rng=rng_a) for _ in range(5)]
    seq_b = [process_caption(caption, shuffle_caption=True, rng=rng_b) for _ in range(5)]
    assert seq_a == seq_b


def test_shuffle_rejoins_with_comma_space_and_drops_empty_tokens():
    out = process_caption("a,b,, c ,", shuffle_caption=True, rng=random.Random(0))
    assert sorted(out.split(", ")) == ["a", "b", "c"]


def test_custom_separators():
    assert process_caption("sks ## a; b", keep_tokens_separator="##", caption_separator=";") == "sks, a, b"
    assert process_caption("sks ||| a", keep_tokens_separator="") == "sks ||| a"  # kohya default: none


def test_only_first_line_is_processed():
    assert process_caption("sks ||| a\nsecond ||| line") == "sks, a"


# ---------------------------------------------------------------- tag_frequency

def test_tag_frequency_counts_comma_tags_without_separator():
    freq = tag_frequency(["sks dog ||| sitting, Grass", "sks dog, grass ,", "", "sks dog|||tree"])
    assert freq == {"sks dog": 3, "sitting": 1, "grass": 2, "tree": 1}
    assert not any(SEP in tag for tag in freq)
