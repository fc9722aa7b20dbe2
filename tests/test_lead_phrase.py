"""Where an utterance's opening phrase is cut off for a faster first TTS chunk."""
from __future__ import annotations

import pytest

from models.lead_phrase import GROWTH, ends_sentence, split_lead


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Please close the door behind you.", ["Please close the door", "behind you."]),
        ("The museum opens at nine every weekday.", ["The museum opens", "at nine every weekday."]),
        # never between a preposition and what follows it
        ("We could meet near the station instead.", ["We could meet", "near the station instead."]),
        ("Turn left after the second traffic light.", ["Turn left", "after the second traffic light."]),
        # a comma is the natural break
        ("Hello there, it is nice to meet you.", ["Hello there,", "it is nice to meet you."]),
        # no phrase start in reach: cut after max_words
        ("Supercalifragilistic expialidocious words keep going on", ["Supercalifragilistic expialidocious words keep", "going on"]),
    ],
)
def test_long_first_sentences_are_cut_where_a_speaker_would_breathe(text: str, expected: list[str]) -> None:
    assert split_lead(text, 4) == expected


@pytest.mark.parametrize(
    "text",
    ["Yes.", "Thank you very much.", "Sure, right away.", "I see. The museum opens at nine every weekday."],
)
def test_short_first_sentences_stay_whole(text: str) -> None:
    assert split_lead(text, 4) == [text]


def test_zero_disables_the_split() -> None:
    text = "Please close the door behind you."
    assert split_lead(text, 0) == [text]
    assert " ".join(split_lead(text, 3)) == text


def test_a_long_first_sentence_comes_in_growing_pieces_so_the_voice_stays_ahead() -> None:
    sentence = ("Good afternoon and welcome to the tour of the old harbour district where fishing boats "
                "have landed their catch for more than three hundred years and the customs house built of "
                "grey stone after the great fire still keeps time for the whole quarter every evening.")
    pieces = split_lead(sentence + " Next one.", 3)
    assert " ".join(pieces) == sentence + " Next one."
    sizes = [len(p.split()) for p in pieces]
    assert len(pieces) >= 3
    assert sizes[0] <= 3
    for before, after in zip(sizes, sizes[1:-1]):
        assert after <= before * GROWTH
    assert pieces[-1].endswith("Next one.")


@pytest.mark.parametrize(("text", "expected"), [("Hello there.", True), ("Really?", True), ('He said "no."', True),
                                                 ("Hello there,", False), ("Your package should arrive", False)])
def test_ends_sentence(text: str, expected: bool) -> None:
    assert ends_sentence(text) is expected


def test_an_endless_sentence_is_cut_into_bounded_pieces_at_natural_places():
    from models.lead_phrase import MAX_PIECE_WORDS, bounded_pieces

    words = ("we walked along the river and talked about the weather " * 40).split()
    pieces = bounded_pieces(" ".join(words))
    assert all(len(p.split()) <= MAX_PIECE_WORDS for p in pieces)
    assert " ".join(pieces).split() == words  # nothing lost, nothing added
    assert all(p.split()[0] in ("and", "about", "the", "along", "we") for p in pieces[1:])  # before a phrase start
    text = "One. " * 30 + "A short end."
    assert bounded_pieces("Hello there, how are you?") == ["Hello there, how are you?"]
    assert all(p.rstrip().endswith(".") for p in bounded_pieces(text))  # sentence ends come first
