"""Cut a streamed LLM reply into pieces that text-to-speech can start saying early."""
from __future__ import annotations

import re

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
    With max_sentences set, the splitter is done after that many sentences: later text is
    dropped, and the caller can stop the model (small models ignore "be brief").
    """

    def __init__(
        self, min_first_words: int = 4, max_chars: int = 200, max_sentences: int | None = None
    ) -> None:
        self.min_first_words = min_first_words
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
        if len(buf) > self.max_chars:
            return self._forced_cut(buf)
        return None

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
