"""A peer in a process of its own, so that it can die the way a browser tab does (no BYE, no DTLS
close): `python -m tests.vanishing_peer URL` connects, prints "connected" once media flows, and
waits to be killed."""
from __future__ import annotations

import asyncio
import sys

from tests.rtc_client import AvatarClient


async def main(base_url: str) -> None:
    client = AvatarClient(base_url)
    await client.connect()
    await client.wait_media()
    print("connected", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
