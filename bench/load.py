"""Load: orders placed over HTTP by an asyncio client (cases 2, 3, 4, 7), and ``wrk``
with a Lua script for the checkout API's throughput and latency (case 5)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

BODY = {
    "email": "bench@example.com", "name": "Bench",
    "lines": [{"sku": "STICKER-PACK", "quantity": 1}],
    "payment_method": "pm_card_visa",
    "shipping_address": {"line1": "1 Bench St", "city": "Leeds", "postal_code": "LS1",
                         "country": "GB"},
}


def place(base: str, path: str, *, orders: int, clients: int, start: int = 0,
          took: list[float] | None = None) -> list[str]:
    """POST ``orders`` checkouts with ``clients`` connections at once; returns the ids
    (and appends each POST's seconds to ``took``)."""
    return asyncio.run(_place(base, path, orders=orders, clients=clients, start=start,
                              took=took))


async def _place(base: str, path: str, *, orders: int, clients: int, start: int,
                 took: list[float] | None = None) -> list[str]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(start, start + orders):
        queue.put_nowait(i)
    ids: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                for attempt in range(20):
                    sent = time.perf_counter()
                    try:
                        r = await client.post(path, json=BODY,
                                              headers={"Idempotency-Key": f"bench-{i}"})
                    except httpx.TransportError:  # as a storefront does: again, same key
                        if attempt == 19:
                            raise
                        await asyncio.sleep(0.1)
                        continue
                    if took is not None:
                        took.append(time.perf_counter() - sent)
                    if r.status_code != 429:
                        break
                    await asyncio.sleep(float(r.headers.get("Retry-After", "0.1")))
                r.raise_for_status()
                ids.append(r.json()["id"])

        await asyncio.gather(*(worker() for _ in range(clients)))
    return ids


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local body = %s
local counter = 0
local prefix = "%s"
function setup(thread)
  thread:set("tid", tostring(thread))
end
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. tid .. "-" .. counter
  return wrk.format(nil, nil, nil, body)
end
local bad = 0
response = function(status, headers, body)
  if status ~= 202 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"requests\\": %%d, \\"seconds\\": %%f, \\"p50\\": %%d, "
    .. "\\"p99\\": %%d, \\"errors\\": %%d}\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(url: str, *, connections: int, seconds: float, threads: int, work: Path) -> WrkResult:
    """``wrk`` at ``connections`` for ``seconds``, every request a new Idempotency-Key."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: apt-get install -y wrk (Debian)")
    script = work / "post.lua"
    body = json.dumps(json.dumps(BODY))
    script.write_text(WRK_SCRIPT % (body, uuid.uuid4().hex[:8]))
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:.0f}s",
         "--timeout", "30s", "-s", str(script), url],
        check=True, capture_output=True, text=True, timeout=seconds + 120).stdout
    match = re.search(r"^JSON (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    data = json.loads(match.group(1))
    return WrkResult(requests=data["requests"], seconds=data["seconds"],
                     p50_ms=data["p50"] / 1000, p99_ms=data["p99"] / 1000,
                     errors=data["errors"])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)
