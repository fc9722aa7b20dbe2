"""Is the user done? The end-of-turn verdict on a paused utterance: by its words and by its voice.

The voice is judged by Smart Turn v3 (an ONNX model on Whisper features of the last 8 s, shipped
in the PyPI package pipecat-ai and run through pipecat's own LocalSmartTurnAnalyzerV3). The words
are the utterance's transcript: a sentence does not end on "the", "of" or "if", whatever the
voice does, and Whisper ends what it hears as a finished sentence with a stop. Synthetic voices
are where the voice model is weakest (espeak-ng questions and fragments alike scored 0.01-0.98,
bench/bench_turn_taking.py), so the words can hold a turn open on their own, and the voice can
only shorten the wait when the words agree.
"""
from __future__ import annotations

import enum
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000

# Words after which an English sentence almost never ends: articles and possessive determiners,
# prepositions that need their object, conjunctions and subordinators, the contracted subjects, and
# fillers. A pause after one of them is a hesitation ("the capital of... France"). Left out on
# purpose: particles that end phrasal verbs (on, off, up, in, out, over), pronouns and auxiliaries
# that end short answers ("thank you", "yes I do", "yes it is"), "like" ("what is it like?").
# A word wrongly here costs the longest wait, a word wrongly missing can cost a cut-off.
UNFINISHED_ENDINGS = frozenset("""
a an the my your his her our their every
of to for with from into onto at about towards toward between than per via without during upon within
and or but nor because if unless whether although whereas
i'm you're we're they're i'd you'd we'd they'd i'll you'll we'll they'll i've you've we've they've
um uh er erm
""".split())


class Verdict(enum.Enum):
    """COMPLETE: end the turn now. UNFINISHED: wait for more (up to the longest wait). UNSURE:
    words and voice disagree: end after the ordinary silence."""

    COMPLETE = "complete"
    UNFINISHED = "unfinished"
    UNSURE = "unsure"


@dataclass(frozen=True, slots=True)
class TurnJudgement:
    verdict: Verdict
    reason: str                       # "words", "voice", "words+voice", "no words"
    probability: float | None = None  # Smart Turn's probability that the turn is complete


def words_unfinished(text: str, language: str | None = "en") -> bool:
    """The transcript stops where no sentence ends: a trailing '...', ',' or '-', or (English) a word
    that cannot end a sentence."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "…", ",", "-", "—", ";", ":")):
        return True
    if language not in (None, "en"):
        return False
    words = re.findall(r"[a-z0-9']+", stripped.lower().replace("’", "'"))
    return bool(words) and words[-1] in UNFINISHED_ENDINGS


def judge_words(text: str, language: str | None = "en") -> TurnJudgement | None:
    """The verdict the words give on their own, or None when the voice decides between finished and unsure."""
    if not text.strip():
        # Nothing recognisable (a cough, noise): the turn goes nowhere, so let it end.
        return TurnJudgement(Verdict.COMPLETE, "no words")
    if words_unfinished(text, language):
        return TurnJudgement(Verdict.UNFINISHED, "words")
    if not text.rstrip().endswith((".", "?", "!")):
        # Whisper ends what it hears as a whole sentence with a stop; "I would like to locate" (for
        # "...to book a") has none. The voice alone is not trusted to end such a turn at once.
        return TurnJudgement(Verdict.UNSURE, "words")
    return None


def judge(text: str, probability: float | None, threshold: float, language: str | None = "en") -> TurnJudgement:
    """The verdict on a paused utterance from its transcript and Smart Turn's probability (None: no voice verdict,
    for want of a model or because it came too late to matter: the silence decides)."""
    words = judge_words(text, language)
    if words is not None:
        return TurnJudgement(words.verdict, words.reason, probability)
    if probability is None:
        return TurnJudgement(Verdict.UNSURE, "words")
    if probability >= threshold:
        return TurnJudgement(Verdict.COMPLETE, "words+voice", probability)
    return TurnJudgement(Verdict.UNSURE, "voice", probability)


def default_model_path() -> Path:
    """The Smart Turn v3 ONNX file inside the installed pipecat-ai package."""
    from models.packaged import package_folders

    for folder in package_folders("pipecat"):
        found = sorted((folder / "audio" / "turn" / "smart_turn" / "data").glob("smart-turn-v3*.onnx"))
        if found:
            return found[-1]
    raise RuntimeError("the end-of-turn model (Smart Turn v3) is missing: `pip install pipecat-ai`, "
                       "or run with --turn-detector silence")


class SmartTurnModel:
    """Smart Turn v3, loaded once and shared by every session; probability() is thread-safe and blocking."""

    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        import asyncio

        from loguru import logger

        # pipecat logs a banner and a debug line per load through loguru: not this server's logs.
        logger.disable("pipecat")
        # Importing pipecat replaces asyncio.wait_for process-wide on Python < 3.12 (with wait_for2's);
        # this server and aiortc are tested with the standard one, so it is put back.
        wait_for = asyncio.wait_for
        try:
            from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
        finally:
            asyncio.wait_for = wait_for

        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise RuntimeError(f"no Smart Turn model at {path}; pass an ONNX file of Smart Turn v3 or omit it")
        self._analyzer = LocalSmartTurnAnalyzerV3(smart_turn_model_path=str(path), cpu_count=threads,
                                                  sample_rate=SAMPLE_RATE)
        self._analyzer.set_sample_rate(SAMPLE_RATE)
        if not callable(getattr(self._analyzer, "_predict_endpoint", None)):
            raise RuntimeError("this pipecat-ai has no LocalSmartTurnAnalyzerV3._predict_endpoint; install the "
                               "version pinned in constraints.txt")
        self.model_path = path
        # One onnxruntime session; concurrent runs would only fight over the same cores.
        self._lock = threading.Lock()

    def probability(self, audio: np.ndarray) -> float:
        """How likely the utterance (float32 16 kHz, ending in the pause being judged) is a finished turn."""
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return 0.0
        with self._lock:
            # The analyzer's buffering keys audio by wall-clock arrival and runs one thread per stream;
            # the VAD already cuts turns in stream time, so only its prediction step is used.
            result = self._analyzer._predict_endpoint(samples)
        return float(result["probability"])

    def warmup(self) -> None:
        self.probability(np.zeros(SAMPLE_RATE, dtype=np.float32))
