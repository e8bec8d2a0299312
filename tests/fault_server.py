"""A scripted HTTP upstream for the sidecar's fault tests (slow, 5xx, SSE, chunked,
drop, large uploads). Run as its own process: ``python tests/fault_server.py PORT``.

It is a real HTTP server on 127.0.0.1 (aiohttp), not a mock: the sidecar talks
to it over TCP exactly as it talks to a model server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

from aiohttp import web

routes = web.RouteTableDef()
STATE = {"version": "7", "fail_every": 0, "served": 0}


@routes.route("*", "/echo{tail:.*}")
async def echo(request: web.Request) -> web.Response:
    h = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_any():
        h.update(chunk)
        n += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body_len": n,
            "body_sha256": h.hexdigest(),
        },
        headers={"X-Upstream": "fault-server", "Set-Cookie": "a=1"},
    )


@routes.get("/v2/health/ready")
async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200)


@routes.get("/v2/models/{name}")
async def metadata(request: web.Request) -> web.Response:
    return web.json_response(
        {"name": request.match_info["name"], "versions": [STATE["version"]], "platform": "fault"}
    )


@routes.post("/admin/version/{v}")
async def set_version(request: web.Request) -> web.Response:
    STATE["version"] = request.match_info["v"]
    return web.json_response(STATE)


@routes.post("/admin/fail/{n}")
async def set_fail(request: web.Request) -> web.Response:
    """Make every n-th inference request fail with 500 (0: none): a broken model server."""
    STATE["fail_every"] = int(request.match_info["n"])
    return web.json_response(STATE)


@routes.post("/v2/models/{name}/infer")
async def infer(request: web.Request) -> web.Response:
    """V2 inference: predicts 1 when the first value of a row is > 5, else 0.
    ?status=500 makes it fail; ?delay=S sleeps first; after POST /admin/fail/N every
    N-th request fails with 500."""
    delay = float(request.query.get("delay", "0"))
    if delay:
        await asyncio.sleep(delay)
    raw = await request.read()
    if "status" in request.query:
        return web.json_response({"error": "injected failure"}, status=int(request.query["status"]))
    STATE["served"] = int(STATE["served"]) + 1
    every = int(STATE["fail_every"])
    if every and STATE["served"] % every == 0:
        return web.json_response({"error": "broken model server"}, status=500)
    try:
        body = json.loads(raw)
        inp = body["inputs"][0]
        n = inp["shape"][0]
        data = inp["data"]
        flat = [x for row in data for x in row] if data and isinstance(data[0], list) else data
        k = len(flat) // n if n else 0
        preds = [
            1 if isinstance(flat[i * k], (int, float)) and flat[i * k] > 5 else 0 for i in range(n)
        ]
    except Exception as exc:
        return web.json_response({"error": f"bad request: {exc}"}, status=400)
    return web.json_response(
        {
            "model_name": request.match_info["name"],
            "model_version": STATE["version"],
            "id": body.get("id", ""),
            "outputs": [{"name": "predict", "shape": [n, 1], "datatype": "INT64", "data": preds}],
        }
    )


@routes.get("/slow")
async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "5")))
    return web.json_response({"slept": True})


@routes.route("*", "/status/{code}")
async def status(request: web.Request) -> web.Response:
    await request.read()
    code = int(request.match_info["code"])
    return web.json_response({"error": f"status {code}"}, status=code)


@routes.get("/sse")
async def sse(request: web.Request) -> web.StreamResponse:
    """OpenAI-style SSE: head after `head` s, first event at `first` s, then one
    event every `interval` s, `events` in all, then [DONE]."""
    q = request.query
    await asyncio.sleep(float(q.get("head", "0")))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(max(0.0, float(q.get("first", "0")) - float(q.get("head", "0"))))
    for i in range(int(q.get("events", "5"))):
        if i:
            await asyncio.sleep(float(q.get("interval", "0.1")))
        chunk = {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f"t{i}"}}],
        }
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@routes.post("/v1/chat/completions")
async def chat(request: web.Request) -> web.StreamResponse:
    """OpenAI-compatible chat completion: echoes token counts; streams when asked,
    with a usage chunk only when stream_options.include_usage is set."""
    body = await request.json()
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    words = ["alpha", "beta", "gamma"]
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(words),
        "total_tokens": prompt_tokens + len(words),
    }
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": " ".join(words)},
                    }
                ],
                "usage": usage,
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(0.05)
    first = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant"}}],
    }
    await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
    await asyncio.sleep(0.2)  # the first token comes 0.25 s after the request
    for w in words:
        chunk = {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": w}}],
        }
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await asyncio.sleep(0.05)
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(
            b"data: "
            + json.dumps(
                {"object": "chat.completion.chunk", "choices": [], "usage": usage}
            ).encode()
            + b"\n\n"
        )
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@routes.get("/chunked")
async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(int(request.query.get("parts", "10"))):
        await resp.write(f"part-{i};".encode())
    await resp.write_eof()
    return resp


@routes.get("/drop")
async def drop(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.close()
    raise asyncio.CancelledError


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=1 << 31)
    app.add_routes(routes)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
