"""Split off the opening phrase of an utterance so text-to-speech can start on it alone.

Piper synthesizes a sentence in one pass, in time roughly proportional to its length (about
30 ms plus 25 ms per word on one core here), so the first sound of a ten-word sentence waits
for all ten words. Saying the first two to four words as their own chunk lets the listener
hear the avatar while the rest is being synthesized behind it. The cut goes where a speaker
would breathe: after a comma, or before a preposition, conjunction, auxiliary or pronoun.
"""
from __future__ import annotations

import re

# Words a new prosodic phrase commonly starts with: breaking before them sounds natural.
_PHRASE_STARTS = frozenset(
    """
    a an the this that these those my your his her its our their some any every no
    and but or nor so yet because although though while when where which who whom whose if unless
    until since than as
    to of in on at for with from by about into onto over under after before behind between
    near through during without within across against along around beside toward towards upon
    is are was were be been being am will would shall should can could may might must
    do does did have has had
    i you he she it we they me him us them
    not please really just very
    """.split()
)
_CLAUSE_END = re.compile(r"[,;:\u2014]$")
_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]]*$")


def split_lead(text: str, max_words: int) -> list[str]:
    """[lead, rest] when the first sentence is longer than `max_words` words, else [text].

    The lead ends at a comma/semicolon/colon/dash within its first `max_words` words, or
    before the last phrase-starting word that leaves at least two words in front of it,
    or after `max_words` words.
    """
    words = text.split()
    if max_words < 2:
        return [text]
    first_sentence = len(words)
    for i, word in enumerate(words):
        if _SENTENCE_END.search(word):
            first_sentence = i + 1
            break
    if first_sentence <= max_words + 1:
        return [text]  # a short first sentence is already a fast first chunk
    cut = None
    for i in range(max_words):
        if _CLAUSE_END.search(words[i]) and i >= 1:
            cut = i + 1
            break
    if cut is None:
        # Before a phrase-starting word, but not inside a run of them ("near | the station").
        starts = [i for i in range(2, max_words + 1) if _starts_phrase(words[i]) and not _starts_phrase(words[i - 1])]
        cut = starts[-1] if starts else max_words
    return [" ".join(words[:cut]), " ".join(words[cut:])]


def _starts_phrase(word: str) -> bool:
    return word.lower().strip("\"'(") in _PHRASE_STARTS
