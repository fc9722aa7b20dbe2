"""--ice-server entries and coturn's time-limited TURN credentials (fast tier)."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from rtc_server.ice import IceConfigError, IceServers, parse_ice_servers


def test_entries_are_parsed_and_credentials_kept_out_of_the_url():
    servers = parse_ice_servers(["stun:stun.example.org:3478", "turn:alice:s3cret@turn.example.org:3478?transport=udp"])
    assert [s.url for s in servers] == ["stun:stun.example.org:3478", "turn:turn.example.org:3478?transport=udp"]
    assert (servers[1].username, servers[1].credential) == ("alice", "s3cret")
    assert IceServers(servers).for_browser() == [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": "turn:turn.example.org:3478?transport=udp", "username": "alice", "credential": "s3cret"}]


@pytest.mark.parametrize("entry", ["http://x", "stun:a:b@host", "turn", "turn: spaced host"])
def test_bad_entries_say_how_to_write_them(entry):
    with pytest.raises(IceConfigError, match="expected stun:HOST|only TURN"):
        parse_ice_servers([entry])


def test_turn_needs_credentials_or_the_shared_secret():
    with pytest.raises(IceConfigError, match="--turn-secret"):
        IceServers(parse_ice_servers(["turn:turn.example.org:3478"]))


def test_time_limited_credentials_are_what_coturn_checks():
    ice = IceServers(parse_ice_servers(["turn:turn.example.org:3478"]), turn_secret="shh", ttl_s=600)
    (entry,) = ice.for_browser(now=1_000_000)
    assert entry["username"] == "1000600:avatar"
    expected = base64.b64encode(hmac.new(b"shh", b"1000600:avatar", hashlib.sha1).digest()).decode()
    assert entry["credential"] == expected
