"""Cut a streamed LLM reply into pieces that text-to-speech can start saying early."""
from __future__ import annotations

import re

from models.lead_phrase import split_lead

_SENTENCE_END = ".!?…"
_CLAUSE_END = ",;:—"
# Characters that may trail a sentence end and belong to that sentence: "Yes!" he said.
_TRAILING = "\"'”’)]»*_"
# Words that end with a period without ending the sentence (compared lower-case, without the dot).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs e.g i.e a.m p.m approx fig mt inc ltd dept".split()
)

_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_HEADING_OR_QUOTE = re.compile(r"^\s*(?:#+|>+)\s*")
_MARKUP = re.compile(r"[*_`~#|<>\[\]{}]+")
_EMOJI = re.compile(
    "["
    "\U0001F000-\U0001FAFF"  # pictographs, emoticons, transport, flags, supplemental symbols
    "\u2600-\u27BF"  # miscellaneous symbols and dingbats
    "\u2B00-\u2BFF"  # arrows and stars used as emoji
    "\uFE0E\uFE0F\u200D\u20E3"  # variation selectors, zero-width joiner, keycap
    "]+"
)
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"\S+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")


def speakable(text: str) -> str:
    """Text without markdown, emoji or layout that a TTS voice would read out or choke on."""
    text = _LINK.sub(r"\1", text)
    text = _LIST_MARKER.sub("", text)
    text = _HEADING_OR_QUOTE.sub("", text)
    text = _MARKUP.sub("", text)
    text = _EMOJI.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


class ClauseSplitter:
    """Feed text deltas, get back complete sentences as soon as they are safe to speak.

    Sentences end at . ! ? (not after abbreviations, initials or list numbers, and not inside
    numbers such as 3.5). The first clause of a reply may also end at , ; : or a dash once it
    has min_first_words words, so speech starts sooner. A sentence that grows past
    max_chars without an end is cut at its last comma or space. Returned text is speakable().
    With lead_words set, a first sentence that runs past lead_words + 1 words without a
    comma gives its opening phrase (models.lead_phrase.split_lead: where the speech
    synthesizer would cut it anyway) as soon as it is written, instead of waiting for the
    sentence to end: text-to-speech starts on it while the model writes the rest.
    With max_sentences set, the splitter is done after that many sentences: later text is
    dropped, and the caller can stop the model (small models ignore "be brief").
    """

    def __init__(
        self, min_first_words: int = 4, max_chars: int = 200, max_sentences: int | None = None,
        lead_words: int = 0,
    ) -> None:
        self.min_first_words = min_first_words
        self.lead_words = lead_words
        self.max_chars = max_chars
        self.max_sentences = max_sentences
        self._buffer = ""
        self._emitted = 0
        self._sentences = 0

    @property
    def done(self) -> bool:
        """True once max_sentences sentences have been returned."""
        return self.max_sentences is not None and self._sentences >= self.max_sentences

    def feed(self, delta: str) -> list[str]:
        """Add a delta; return the clauses it completed (possibly none)."""
        out: list[str] = []
        if self.done:
            return out
        self._buffer += delta
        while not self.done:
            cut = self._find_cut()
            if cut is None:
                break
            piece, self._buffer = self._buffer[:cut], self._buffer[cut:].lstrip()
            self._emit(piece, out)
        return out

    def flush(self) -> str:
        """The speakable remainder at the end of a reply ("" if none); resets the splitter."""
        rest = "" if self.done else speakable(self._buffer)
        self.reset()
        return rest if _has_words(rest) else ""

    def reset(self) -> None:
        self._buffer = ""
        self._emitted = 0
        self._sentences = 0

    def _emit(self, piece: str, out: list[str]) -> None:
        text = speakable(piece)
        if _has_words(text):
            out.append(text)
            self._emitted += 1
            if piece.rstrip().rstrip(_TRAILING)[-1:] in _SENTENCE_END or piece.endswith("\n"):
                self._sentences += 1

    def _find_cut(self) -> int | None:
        """Index just past the first safe clause end in the buffer, or None."""
        buf = self._buffer
        for i, ch in enumerate(buf):
            if ch == "\n":
                # Line breaks separate list items and paragraphs.
                return i + 1
            if ch in _SENTENCE_END:
                end = i + 1
                while end < len(buf) and (buf[end] in _SENTENCE_END or buf[end] in _TRAILING):
                    end += 1
                if end == len(buf):
                    break  # the next delta decides: "3." may become "3.5"
                if buf[end].isspace() and not (ch == "." and self._period_continues(buf, i)):
                    return end
            elif ch in _CLAUSE_END and self._emitted == 0:
                if i + 1 == len(buf):
                    break
                if buf[i + 1].isspace() and len(buf[:i].split()) >= self.min_first_words:
                    return i + 1
        if self._emitted == 0 and self.lead_words >= 2:
            lead = self._lead_cut(buf)
            if lead is not None:
                return lead
        if len(buf) > self.max_chars:
            return self._forced_cut(buf)
        return None

    def _lead_cut(self, buf: str) -> int | None:
        """Index just past the opening phrase of a first sentence already longer than a lead."""
        # Only words followed by a space are known whole; the last may still be growing.
        words = [m for m in _WORD.finditer(buf) if m.end() < len(buf)]
        if len(words) < self.lead_words + 2:
            return None  # the sentence may yet end short: then it goes whole
        pieces = split_lead(" ".join(m.group() for m in words), self.lead_words)
        if len(pieces) < 2:
            return None
        return words[len(pieces[0].split()) - 1].end()

    @staticmethod
    def _period_continues(buf: str, i: int) -> bool:
        """True when the period at i belongs to an abbreviation, initial or list number."""
        start = i
        while start > 0 and not buf[start - 1].isspace():
            start -= 1
        word = buf[start:i].lstrip("\"'(“‘[")
        if not word:
            return False
        if word.lower() in _ABBREVIATIONS:
            return True
        if len(word) == 1 and word.isupper():
            return True  # an initial: "J. R. R. Tolkien"
        if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word):
            return True  # "U.S." or "e.g." spelled with inner dots
        line_start = start == 0 or buf[start - 1] == "\n"
        return word.isdigit() and line_start  # "1. Apples" is a list item, not a sentence

    def _forced_cut(self, buf: str) -> int:
        limit = buf[: self.max_chars]
        for sep in (", ", "; ", ": ", " "):
            pos = limit.rfind(sep)
            if pos > 0:
                return pos + 1
        return self.max_chars
