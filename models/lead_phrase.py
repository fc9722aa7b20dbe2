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


GROWTH = 4  # each piece at most this many times the words of the one before


def split_lead(text: str, max_words: int) -> list[str]:
    """The text in pieces: an opening phrase of at most `max_words` words, then pieces that
    grow GROWTH-fold until the first sentence ends, then the rest; [text] when the first
    sentence has at most max_words + 1 words.

    Growing pieces keep the voice ahead: a piece takes about 1/12 of its own playing time to
    synthesize, so one four times longer is ready before the piece before it has been heard.
    Each cut is at a comma/semicolon/colon/dash within reach, or before the last phrase-
    starting word that leaves two words or more in front of it, or at the size limit.
    """
    words = text.split()
    if max_words < 2:
        return [text]
    sentence_end = next((i + 1 for i, w in enumerate(words) if _SENTENCE_END.search(w)), len(words))
    pieces: list[str] = []
    start, size = 0, max_words
    while sentence_end - start > size + 1:
        cut = start + _cut_point(words[start : start + size + 1], size)
        pieces.append(" ".join(words[start:cut]))
        start, size = cut, (cut - start) * GROWTH
    pieces.append(" ".join(words[start:]))
    return pieces


def ends_sentence(text: str) -> bool:
    """Whether `text` ends with sentence punctuation (so a pause after it is natural)."""
    return bool(_SENTENCE_END.search(text.rstrip()))


def _cut_point(window: list[str], size: int) -> int:
    """How many words of `window` (size + 1 words: the +1 is look-ahead) the piece takes."""
    for i in range(1, size):
        if _CLAUSE_END.search(window[i]):
            return i + 1
    # Before a phrase-starting word, but not inside a run of them ("near | the station").
    starts = [i for i in range(2, size + 1) if _starts_phrase(window[i]) and not _starts_phrase(window[i - 1])]
    return starts[-1] if starts else size


def _starts_phrase(word: str) -> bool:
    return word.lower().strip("\"'(") in _PHRASE_STARTS


MAX_PIECE_WORDS = 30  # Piper holds a sentence in memory at once: 2000 unpunctuated characters peaked at +1590 MB whole, +178 MB in 30-word pieces


def bounded_pieces(text: str, max_words: int = MAX_PIECE_WORDS) -> list[str]:
    """`text` with every stretch of more than `max_words` words between sentence ends cut into
    pieces of at most `max_words` words (at a comma or before a phrase-starting word when one is
    within reach), so that no single synthesis grows with an endless sentence."""
    words = text.split()
    if len(words) <= max_words:
        return [text]
    pieces: list[str] = []
    start = 0
    while len(words) - start > max_words:
        window = words[start : start + max_words + 1]
        half = max_words // 2
        # The last sentence end, else the last clause end, else the last phrase start, in the
        # second half of the window; else the limit.
        for found in ([i + 1 for i in range(len(window) - 1) if _SENTENCE_END.search(window[i])],
                      [i + 1 for i in range(half, max_words) if _CLAUSE_END.search(window[i])],
                      [i for i in range(half, max_words + 1) if _starts_phrase(window[i])
                       and not _starts_phrase(window[i - 1])]):
            if found:
                cut = start + found[-1]
                break
        else:
            cut = start + max_words
        pieces.append(" ".join(words[start:cut]))
        start = cut
    pieces.append(" ".join(words[start:]))
    return pieces
