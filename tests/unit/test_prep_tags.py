"""Tag editor operations: pure functions over {image: [tags]}."""

import os
import stat

import pytest

from lora_trainer.prep.tags import (add_tags, as_tags, backup_path, consolidate_tags, dedupe_tags,
                                    filter_images, find_redundant, format_caption, frequency_table,
                                    parse_caption, parse_synonyms, remove_tags, replace_tags, sort_tags,
                                    write_text_atomic)

SEP = "|||"


def caps(**texts):
    return {k: parse_caption(v) for k, v in texts.items()}


def text(captions):
    return {k: format_caption(v) for k, v in captions.items()}


# ---------------------------------------------------------------- parse / format

def test_parse_and_format_round_trip():
    tags = parse_caption("  sks,  1girl |||smile, ,long   hair,\nsecond line")
    assert tags == ["sks", "1girl", SEP, "smile", "long hair"]
    assert format_caption(tags) == "sks, 1girl ||| smile, long hair"
    assert parse_caption(format_caption(tags)) == tags
    assert parse_caption("a, b ||| c ||| d") == ["a", "b", SEP, "c", SEP, "d"]
    assert format_caption(["|||", "a"]) == "||| a"
    assert parse_caption("") == [] and format_caption([]) == ""
    assert parse_caption("\n\n  ^_^, >_<  \n") == ["^_^", ">_<"]


def test_as_tags():
    assert as_tags("a, b,,c ") == ["a", "b", "c"]
    assert as_tags(["a, b", " c "]) == ["a", "b", "c"]
    assert as_tags(None) == []


# ---------------------------------------------------------------- queries

def test_frequency_table_counts_images_once_lowercased():
    c = caps(x="sks ||| smile, Smile, dress", y="sks, dress", z="hat")
    assert frequency_table(c) == {"dress": 2, "sks": 2, "hat": 1, "smile": 1}
    assert list(frequency_table(c)) == ["dress", "sks", "hat", "smile"]  # count desc, then A-Z
    assert frequency_table(c, keys=["z"]) == {"hat": 1}


def test_filter_images():
    c = caps(x="a, b", y="b, c", z="d")
    assert filter_images(c, ["a", "b"], "all") == ["x"]
    assert filter_images(c, "B, c", "any") == ["x", "y"]
    assert filter_images(c, ["b"], "none") == ["z"]
    assert filter_images(c, [], "any") == ["x", "y", "z"]  # empty filter shows everything
    with pytest.raises(ValueError):
        filter_images(c, ["a"], "some")


# ---------------------------------------------------------------- edits

def test_add_triggers_first_in_order_without_duplicates():
    c = caps(x="1girl, sks, smile", y="mychar ||| hat", z="")
    out = add_tags(c, tags=["smile", "outdoors"], triggers=["sks", "mychar"])
    assert text(out) == {"x": "sks, mychar, 1girl, smile, outdoors",
                         "y": "sks, mychar ||| hat, smile, outdoors",
                         "z": "sks, mychar, smile, outdoors"}
    assert text(c)["x"] == "1girl, sks, smile"  # input untouched


def test_add_with_separator_and_position_start():
    c = caps(x="1girl, smile", y="sks ||| hat")
    out = add_tags(c, tags="outdoors", triggers="sks", add_separator=True, position="start")
    assert text(out) == {"x": "sks ||| outdoors, 1girl, smile", "y": "sks ||| outdoors, hat"}
    assert text(add_tags(c, tags="new", position="start")) == {"x": "new, 1girl, smile", "y": "sks ||| new, hat"}


def test_add_only_to_selected_keys():
    c = caps(x="a", y="b")
    assert text(add_tags(c, tags="new", keys=["y"])) == {"x": "a", "y": "b, new"}


def test_remove_tags():
    c = caps(x="sks ||| Long Hair, smile, long hair", y="smile")
    assert text(remove_tags(c, "long hair")) == {"x": "sks ||| smile", "y": "smile"}
    assert text(remove_tags(c, [SEP])) == {"x": "sks, Long Hair, smile, long hair", "y": "smile"}


def test_replace_with_synonym_list():
    rules = parse_synonyms("# synonyms\ncirclet, diadem -> tiara\nmaid headdress ->\nhat → headwear, cap\n")
    assert rules == {"circlet": "tiara", "diadem": "tiara", "maid headdress": "", "hat": "headwear, cap"}
    c = caps(x="sks ||| circlet, smile, tiara", y="Diadem, maid headdress, hat")
    out = replace_tags(c, rules)
    assert text(out) == {"x": "sks ||| tiara, smile", "y": "tiara, headwear, cap"}
    assert text(replace_tags(c, {"smile": "grin"}, keys=["x"]))["x"] == "sks ||| circlet, grin, tiara"
    assert text(replace_tags(caps(x="a, b"), [("a", "b"), ("b", "c")])) == {"x": "b, c"}  # one pass
    with pytest.raises(ValueError, match="line 1"):
        parse_synonyms("circlet tiara")


def test_dedupe_keeps_first_spelling_and_separator():
    c = caps(x="Smile, sks ||| smile, hat, hat ||| end")
    assert text(dedupe_tags(c)) == {"x": "Smile, sks ||| hat ||| end"}


def test_sort_alphabetical_keeps_fixed_part_and_separator():
    c = caps(x="sks, z-trigger ||| zebra, Apple, mango ||| last, first", y="zebra, sks, apple")
    out = sort_tags(c, "alphabetical", triggers=["sks"])
    assert text(out) == {"x": "sks, z-trigger ||| Apple, mango, zebra ||| last, first",
                         "y": "sks, apple, zebra"}
    assert text(sort_tags(c, "alphabetical", reverse=True))["y"] == "zebra, sks, apple"


def test_sort_by_frequency_over_the_whole_dataset():
    c = caps(x="trig ||| rare, common, mid", y="common, mid", z="common")
    out = sort_tags(c, "frequency", keys=["x"])
    assert text(out) == {"x": "trig ||| common, mid, rare", "y": "common, mid", "z": "common"}
    with pytest.raises(ValueError):
        sort_tags(c, "length")


def test_consolidate_drops_generic_tags_and_merges_synonyms():
    c = caps(x="shirt ||| white shirt, shirt, circlet, hair ornament, long_hair, hair",
             y="shirt, skirt, pleated skirt, skirt")
    out = consolidate_tags(c, "circlet -> tiara", keep=["hair"])
    assert text(out) == {"x": "shirt ||| white shirt, tiara, hair ornament, long_hair, hair",
                         "y": "shirt, pleated skirt"}
    assert find_redundant(c) == {("shirt", "white shirt"): 1, ("hair", "long_hair"): 1,
                                 ("skirt", "pleated skirt"): 1}


def test_consolidate_selected_keys_only():
    c = caps(x="shirt, white shirt", y="shirt, white shirt")
    assert text(consolidate_tags(c, keys=["y"])) == {"x": "shirt, white shirt", "y": "white shirt"}


# ---------------------------------------------------------------- file helpers

def test_write_text_atomic_keeps_mode_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    write_text_atomic(p, "one\n")
    assert p.read_text() == "one\n" and stat.S_IMODE(os.stat(p).st_mode) == 0o644
    os.chmod(p, 0o600)
    write_text_atomic(p, "two\n")
    assert p.read_text() == "two\n" and stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_backup_path_never_overwrites(tmp_path):
    p = tmp_path / "a.txt"
    assert backup_path(p).name == "a.txt.bak"
    (tmp_path / "a.txt.bak").write_text("x")
    assert backup_path(p).name == "a.txt.bak.1"
    (tmp_path / "a.txt.bak.1").write_text("x")
    assert backup_path(p).name == "a.txt.bak.2"
