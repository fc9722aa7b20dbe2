"""Chat models (echo, local llama.cpp, OpenAI-compatible over real HTTP), history, clause splitter."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket

import pytest
from aiohttp import web

from models.llm import (
    DEFAULT_SYSTEM_PROMPT,
    ChatHistory,
    ClauseSplitter,
    EchoChatModel,
    LLMError,
    make_chat_model,
    speakable,
)
from models.llm.openai import OpenAIChatModel


def split_all(deltas: list[str], **options) -> list[str]:
    splitter = ClauseSplitter(**options)
    out: list[str] = []
    for delta in deltas:
        out += splitter.feed(delta)
    rest = splitter.flush()
    return out + ([rest] if rest else [])


def char_by_char(text: str) -> list[str]:
    return list(text)


# ---- clause splitter ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello! How are you today?", ["Hello!", "How are you today?"]),
        ("Sure. It costs 3.5 dollars.", ["Sure.", "It costs 3.5 dollars."]),
        ("Mr. Smith met Dr. Jones today. They talked.", ["Mr. Smith met Dr. Jones today.", "They talked."]),
        ("J. R. R. Tolkien wrote it. The U.S. loved it.", ["J. R. R. Tolkien wrote it.", "The U.S. loved it."]),
        # The first clause may end at a comma once it has four words...
        (
            "Well, I think that the answer, honestly, is 42. Then, later, we see.",
            ["Well, I think that the answer,", "honestly, is 42.", "Then, later, we see."],
        ),
        # ...or at a colon / semicolon; later clauses only at sentence ends.
        (
            "Here is what I found: it rains; take an umbrella, or a coat.",
            ["Here is what I found:", "it rains; take an umbrella, or a coat."],
        ),
        ("Really?! Yes... I am sure.", ["Really?!", "Yes...", "I am sure."]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("It has 1,000 rooms, all of them big.", ["It has 1,000 rooms,", "all of them big."]),
        ("At 10:30 we leave", ["At 10:30 we leave"]),
        ("No end here", ["No end here"]),
        ("", []),
    ],
)
def test_clause_splitter_exact(text, expected):
    assert split_all([text]) == expected
    # Streaming character by character must give the same clauses.
    assert split_all(char_by_char(text)) == expected


def test_clause_waits_for_what_follows_a_period():
    splitter = ClauseSplitter()
    assert splitter.feed("It costs 3.") == []  # could still become 3.5
    assert splitter.feed("5 dollars. And") == ["It costs 3.5 dollars."]
    assert splitter.flush() == "And"
    assert splitter.flush() == ""


def test_clause_splitter_cleans_markdown_and_emoji():
    text = "## Tips\n**Yes**, drink *water* 💧 daily!\n1. Sleep well.\n- Eat `greens` 🥦\nSee [the guide](http://x.y)."
    assert split_all([text]) == [
        "Tips",
        "Yes, drink water daily!",
        "Sleep well.",
        "Eat greens",
        "See the guide.",
    ]


def test_clauses_without_words_are_dropped():
    assert split_all(["😀😀. ** . Fine."]) == ["Fine."]


def test_speakable_keeps_ordinary_text():
    assert speakable("It's 20°C, isn't it?") == "It's 20°C, isn't it?"
    assert speakable("  spaced   out \n text ") == "spaced out text"


def test_long_sentence_is_cut_at_a_comma():
    long = "This sentence keeps going, " * 12 + "and ends."
    pieces = split_all([long], max_chars=80)
    assert len(pieces) > 2
    assert all(len(p) <= 80 for p in pieces)
    assert " ".join(pieces) == speakable(long)


def test_max_sentences_marks_the_splitter_done():
    splitter = ClauseSplitter(max_sentences=2)
    out = splitter.feed("One, two, three, four, five. Second one. Third one. ")
    assert out == ["One, two, three, four,", "five.", "Second one."]
    assert splitter.done
    assert splitter.feed("More text. ") == []
    assert splitter.flush() == ""
    assert not splitter.done  # flush resets for the next reply


# ---- history --------------------------------------------------------------------------


def test_history_is_bounded_and_alternates():
    history = ChatHistory(system_prompt="Be brief.", max_turns=2)
    for i in range(5):
        history.add_user(f"question {i}")
        assert len(history) <= 4
        history.add_assistant(f"answer {i}")
        assert len(history) <= 4
    messages = history.messages()
    assert messages[0] == {"role": "system", "content": "Be brief."}
    # Trimming drops a block of old turns at once (so the prompt prefix stays cached between trims).
    assert [m["content"] for m in messages[1:]] == ["question 4", "answer 4"]

    trims = history.trims
    assert trims >= 1
    history.add_user("one more")
    history.add_assistant("sure")
    assert history.trims == trims  # below the bound again: nothing dropped

    history.add_user("are you")
    history.add_user("there?")  # spoken in two pieces before any reply
    assert history.messages()[-1] == {"role": "user", "content": "are you there?"}
    assert history.messages()[1]["role"] == "user"  # trimming never leaves a dangling reply


def test_history_pending_user_is_not_stored():
    history = ChatHistory()
    messages = history.messages(pending_user="hello")
    assert messages[0]["content"] == DEFAULT_SYSTEM_PROMPT
    assert messages[-1] == {"role": "user", "content": "hello"}
    assert len(history) == 0
    messages[0]["content"] = "changed"  # callers get copies
    assert history.messages()[0]["content"] == DEFAULT_SYSTEM_PROMPT


def test_history_ignores_empty_text():
    history = ChatHistory()
    history.add_user("   ")
    history.add_assistant("")
    assert len(history) == 0


# ---- echo -----------------------------------------------------------------------------


async def test_echo_streams_the_last_user_message_word_by_word():
    model = make_chat_model("echo")
    messages = ChatHistory().messages(pending_user="hello there  world")
    deltas = [d async for d in model.stream(messages)]
    assert deltas == ["hello", " there", "  world"]
    assert await model.complete([{"role": "system", "content": "x"}]) == ""


async def test_echo_stops_when_cancelled():
    model = EchoChatModel(delay_s=0.05)
    seen: list[str] = []

    async def consume():
        async for delta in model.stream([{"role": "user", "content": "one two three four five six"}]):
            seen.append(delta)

    task = asyncio.create_task(consume())
    while len(seen) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(seen) < 6


def test_factory_rejects_bad_kinds():
    with pytest.raises(LLMError, match="unknown chat model kind"):
        make_chat_model("gpt-99")
    with pytest.raises(LLMError, match="base_url"):
        make_chat_model("openai")
    assert isinstance(make_chat_model("ECHO"), EchoChatModel)


# ---- local llama.cpp ------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_model():
    pytest.importorskip("llama_cpp")
    model = make_chat_model("local", seed=7)
    yield model
    model.close()


@pytest.mark.slow
async def test_prefill_puts_the_history_in_llamas_prompt_cache(local_model):
    history = ChatHistory(system_prompt="You are a helpful guide.")
    history.add_user("Where is the station?")
    history.add_assistant("It is two streets to the north, next to the old bakery.")
    await local_model.prefill(history.messages())
    # llama.cpp's evaluated tokens: the next turn's prompt starts with them and reads only the rest.
    text = local_model.cached_prompt()
    assert "two streets to the north" in text and "Where is the station?" in text


@pytest.mark.slow
async def test_local_model_answers_a_question(local_model):
    messages = ChatHistory().messages(pending_user="What is the capital of France?")
    deltas = [d async for d in local_model.stream(messages)]
    assert len(deltas) > 1  # streamed, not one block
    assert "".join(deltas).strip()
    assert local_model.last_token_count <= local_model.max_tokens
    assert not local_model.generating


@pytest.mark.slow
async def test_cancelling_the_consumer_stops_llama_generation(local_model):
    local_model.max_tokens = 400
    try:
        messages = [{"role": "user", "content": "Count from one to two hundred, one number per line."}]
        seen: list[str] = []

        async def consume():
            async for delta in local_model.stream(messages):
                seen.append(delta)

        task = asyncio.create_task(consume())
        while len(seen) < 3:
            assert not task.done(), "generation ended before it could be cancelled"
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # stream() returns only after the worker let go, so it is already idle...
        assert not local_model.generating
        # ...and it stopped right after the cancel instead of running on to max_tokens.
        assert local_model.last_token_count <= len(seen) + 3
        assert local_model.last_token_count < 400
    finally:
        local_model.max_tokens = 120

    # The model is free for the next turn.
    again = await local_model.complete([{"role": "user", "content": "Say hi."}])
    assert again.strip()


@pytest.mark.slow
async def test_closing_the_stream_early_stops_llama_generation(local_model):
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    async with contextlib.aclosing(local_model.stream(messages)) as stream:
        async for _ in stream:
            break
    assert not local_model.generating
    assert local_model.last_token_count <= 3


@pytest.mark.slow
async def test_a_crashed_llm_process_fails_its_reply_and_comes_back(local_model):
    """A native crash (here SIGSEGV sent to the worker mid-reply) fails that reply with an
    LLMError naming the signal; the supervisor starts a new process that answers the next one."""
    first_pid = local_model.pid
    assert first_pid is not None and first_pid != os.getpid()
    restarts = local_model.restarts
    local_model.max_tokens = 400
    seen: list[str] = []
    try:
        with pytest.raises(LLMError, match="SIGSEGV"):
            async for delta in local_model.stream(
                    [{"role": "user", "content": "Count from one to two hundred, one number per line."}]):
                seen.append(delta)
                if len(seen) == 3:
                    local_model.kill(signal.SIGSEGV)
    finally:
        local_model.max_tokens = 120
    assert len(seen) >= 3
    answer = await local_model.complete([{"role": "user", "content": "Say hi."}])
    assert answer.strip()
    assert local_model.pid not in (None, first_pid)
    assert local_model.restarts == restarts + 1
    assert not local_model.generating


@pytest.mark.slow
def test_a_model_that_crashes_at_start_is_named_with_the_fix(tmp_path):
    """Not a GGUF at all: the worker reports why, and the error names the model and the fix."""
    pytest.importorskip("llama_cpp")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(LLMError, match=r"broken\.gguf failed its start-up check.*--llm echo"):
        make_chat_model("local", model_path=broken)


@pytest.mark.slow
def test_missing_gguf_is_a_clear_error(tmp_path):
    pytest.importorskip("llama_cpp")
    missing = tmp_path / "nope.gguf"
    with pytest.raises(LLMError, match="nope.gguf"):
        make_chat_model("local", model_path=missing)


# ---- OpenAI-compatible endpoint over real HTTP ----------------------------------------


class FakeOpenAIServer:
    """A real aiohttp server speaking the OpenAI streaming chat-completions format."""

    def __init__(self, words: list[str], delay_s: float = 0.0, status: int = 200) -> None:
        self.words = words
        self.delay_s = delay_s
        self.status = status
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.sent = 0
        self.disconnected = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return web.json_response({"error": {"message": "model not found"}}, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b": keep-alive\n\n")
            first = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
            await response.write(f"data: {json.dumps(first)}\n\n".encode())
            for word in self.words:
                await asyncio.sleep(self.delay_s)
                chunk = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.sent += 1
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    async def __aenter__(self) -> FakeOpenAIServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_openai_streams_deltas():
    async with FakeOpenAIServer(["Paris", " is", " the", " capital", "."]) as server:
        model = make_chat_model("openai", base_url=server.base_url, model="tiny", api_key="sk-test")
        try:
            messages = ChatHistory().messages(pending_user="Capital of France?")
            deltas = [d async for d in model.stream(messages)]
        finally:
            await model.aclose()
    assert deltas == ["Paris", " is", " the", " capital", "."]
    body = server.requests[0]
    assert body["stream"] is True and body["model"] == "tiny"
    assert body["messages"] == messages
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


async def test_openai_error_status_names_url_and_status():
    async with FakeOpenAIServer([], status=404) as server:
        model = OpenAIChatModel(base_url=server.base_url, model="missing")
        try:
            with pytest.raises(LLMError) as info:
                await model.complete([{"role": "user", "content": "hi"}])
        finally:
            await model.aclose()
    message = str(info.value)
    assert "404" in message and f"{server.base_url}/chat/completions" in message
    assert "model not found" in message


async def test_openai_unreachable_endpoint_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    model = OpenAIChatModel(base_url=url, model="x", connect_timeout_s=2)
    try:
        with pytest.raises(LLMError) as info:
            await model.complete([{"role": "user", "content": "hi"}])
    finally:
        await model.aclose()
    assert f"{url}/chat/completions" in str(info.value)
    assert "cannot reach" in str(info.value)


async def test_openai_silent_endpoint_times_out():
    async with FakeOpenAIServer(["late"], delay_s=3.0) as server:
        model = OpenAIChatModel(base_url=server.base_url, model="x", read_timeout_s=0.3)
        try:
            with pytest.raises(LLMError, match="did not answer in time"):
                await model.complete([{"role": "user", "content": "hi"}])
        finally:
            await model.aclose()


async def test_openai_cancel_closes_the_connection():
    words = [f" w{i}" for i in range(200)]
    async with FakeOpenAIServer(words, delay_s=0.01) as server:
        model = OpenAIChatModel(base_url=server.base_url, model="x")
        seen: list[str] = []

        async def consume():
            async for delta in model.stream([{"role": "user", "content": "go"}]):
                seen.append(delta)

        task = asyncio.create_task(consume())
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server sees the connection drop and stops producing.
        await asyncio.wait_for(server.disconnected.wait(), timeout=10)
        await model.aclose()
    assert server.sent < len(words)


def test_a_long_first_sentence_gives_its_opening_phrase_early():
    splitter = ClauseSplitter(min_first_words=3, lead_words=4)
    out: list[str] = []
    for word in "I'm a chatbot designed to assist users with many topics. And more. ".split(" "):
        out += splitter.feed(word + " ")
        if out:
            break
    # Out once the sentence is known to be longer than a lead, cut where the TTS would cut it.
    assert out == ["I'm a chatbot designed"]
    assert splitter.feed("") == []
    rest = splitter.flush()
    assert rest.startswith("to assist")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Short first sentences and early commas go whole, as without lead_words.
        ("My name is Elena. I like cats a lot, really.", ["My name is Elena.", "I like cats a lot, really."]),
        ("Well, I think so too today. Yes.", ["Well, I think so too today.", "Yes."]),
        # Only the first sentence is cut.
        ("It is a sunny day in the town today. Then it rains on all the hills of the land.",
         ["It is a sunny", "day in the town today.", "Then it rains on all the hills of the land."]),
    ],
)
def test_lead_words_streamed_word_by_word(text, expected):
    deltas = [w + " " for w in text.split(" ")]
    assert split_all(deltas, min_first_words=3, lead_words=4) == expected
    assert split_all(char_by_char(text), min_first_words=3, lead_words=4) == expected
