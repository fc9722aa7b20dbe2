"""Where an utterance's opening phrase is cut off for a faster first TTS chunk."""
from __future__ import annotations

import pytest

from models.lead_phrase import split_lead


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
