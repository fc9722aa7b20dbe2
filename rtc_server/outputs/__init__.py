"""The ways out of a session: the browser's WebRTC peer and viewers (webrtc), HLS live (hls),
a recording (record) and an RTMP push (rtmp). The H.264 ones share one encoder (feed)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rtc_server.outputs.base import Output, OutputError
from rtc_server.outputs.publish import Published
from rtc_server.outputs.record import Recordings


class OutputSpec(BaseModel):
    """One output object of POST /sessions or POST /sessions/{id}/outputs."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["hls", "record", "rtmp"]
    url: str | None = Field(None, pattern=r"^rtmps?://[^/\s]+/\S+$", max_length=1000)

    @model_validator(mode="after")
    def _url_for_rtmp(self) -> "OutputSpec":
        if self.type == "rtmp" and self.url is None:
            raise ValueError("an rtmp output needs a url: {\"type\": \"rtmp\", \"url\": \"rtmp://host/app/key\"}")
        if self.type != "rtmp" and self.url is not None:
            raise ValueError(f"a {self.type} output takes no url (the server makes its URL)")
        return self


def build_output(spec: OutputSpec, published: Published, recordings: "Recordings") -> Output:
    """The output `spec` asks for (not yet opened); OutputError when it is incomplete."""
    if spec.type == "hls":
        from rtc_server.outputs.hls import HlsOutput

        return HlsOutput(published)
    if spec.type == "record":
        from rtc_server.outputs.record import RecordOutput

        return RecordOutput(published, recordings)
    assert spec.url is not None  # the spec's validator requires it
    from rtc_server.outputs.rtmp import RtmpOutput

    return RtmpOutput(spec.url)


__all__ = ["Output", "OutputError", "OutputSpec", "build_output"]
