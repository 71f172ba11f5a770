import pytest

from facap_dataset.captions import CAPTION_JOIN_RULES, join_captions


def test_fashioniq_join_matches_the_clip4cir_rule():
    captions = ["is red.", " has long sleeves?"]
    assert join_captions(captions) == "Is red and has long sleeves"


def test_fashioniq_join_keeps_empty_and_space_led_captions_meaningful():
    assert join_captions(["", " is shorter"]) == " and is shorter"
    assert join_captions([" is blue", "more fitted"]) == "Is blue and more fitted"


def test_both_orders_gives_the_two_joins():
    assert join_captions(["is red", "is short"], "both-orders") == ["Is red and is short", "Is short and is red"]


def test_single_caption_is_returned_stripped_by_every_rule():
    for rule in CAPTION_JOIN_RULES:
        expected = ["The dress is red.", "The dress is red."] if rule == "both-orders" else "The dress is red."
        assert join_captions([" The dress is red. "], rule) == expected


def test_unknown_rule_and_empty_captions_are_refused():
    with pytest.raises(ValueError, match="unknown caption join rule 'nope'"):
        join_captions(["a", "b"], "nope")
    with pytest.raises(ValueError, match="no captions"):
        join_captions([])
