"""The live server: the page, the song, frames over a WebSocket, /stats, and /stream.mjpg.

aiohttp serves HTTP and WebSockets from one asyncio loop in one process; generation runs on a thread
of its own (`engine.Generator`) and hands each JPEG to the loop. Bound to 127.0.0.1 unless told
otherwise; on any other address every request needs the token printed with the URL.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import mimetypes
import secrets
import struct
import time
from collections import deque
from pathlib import Path

import numpy as np

from ..checks import dtype_name
from ..errors import MusicvizError

PAGE = Path(__file__).resolve().parent / "page.html"
SYNC_WINDOW = 2000  # the page's latest sync errors kept for the p95
FRAME_HEADER = struct.Struct("<Id")  # frame index (uint32), its time in seconds (float64)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LiveState:
    """What the server knows: the frames made (newest per index), the pages, their reports."""

    def __init__(self, fps: float, keep_seconds: float = 30.0, follows_input: bool = False):
        self.fps = fps
        self.follows_input = follows_input  # frames of a live input: the newest is the one to show
        self.frames: dict[int, tuple[float, bytes, int]] = {}  # index -> (time in seconds, JPEG, version)
        self.version = 0  # counts the frames added: a frame made again (new settings) has a new version
        self.sent: dict = {}  # page -> {index: version sent}
        self.keep = int(keep_seconds * fps)
        self.clients: set = set()
        self.frames_displayed = 0
        self.displayed_fps = 0.0
        self.sync_errors: deque = deque(maxlen=SYNC_WINDOW)  # milliseconds
        self.gaps: deque = deque(maxlen=SYNC_WINDOW)  # milliseconds between frames shown, from the pages
        self.playhead = 0.0
        self.playing = False
        self.clock_at = None  # monotonic seconds when the server's own clock last moved the playhead
        self.message = ""
        self.new_frame = asyncio.Event()

    def add_frame(self, index: int, jpeg: bytes, seconds: float | None = None) -> None:
        """A frame made: `seconds` is when it is to be seen (default: index / fps, the song's grid)."""
        self.version += 1
        self.frames[index] = (index / self.fps if seconds is None else seconds, jpeg, self.version)
        if len(self.frames) > self.keep:
            for k in sorted(self.frames)[: len(self.frames) - self.keep]:
                del self.frames[k]
        self.wake()

    def wake(self) -> None:
        """Wake the pages' senders: frames were made, or a page needs them again."""
        self.new_frame.set()
        self.new_frame = asyncio.Event()

    def frame_at(self, seconds: float) -> tuple[int, bytes] | None:
        """The newest frame to be seen at or before `seconds` (of a live input: the newest), else the
        earliest made."""
        if not self.frames:
            return None
        if self.follows_input:
            k = max(self.frames)
        else:
            at_or_before = [k for k, (t, _, _) in self.frames.items() if t <= seconds + 1e-6]
            k = max(at_or_before) if at_or_before else min(self.frames)
        return k, self.frames[k][1]

    def report(self, message: dict) -> None:
        """A page's report: frames it showed since the last one, their sync errors, its clock."""
        shown = message.get("displayed", 0)
        if isinstance(shown, (int, float)) and 0 <= shown < 1e6:
            self.frames_displayed += int(shown)
        for key, store in (("sync_ms", self.sync_errors), ("gaps_ms", self.gaps)):
            values = message.get(key, [])
            if isinstance(values, list):
                store.extend(float(v) for v in values[:1000] if isinstance(v, (int, float)) and np.isfinite(v))
        fps = message.get("fps")
        if isinstance(fps, (int, float)) and np.isfinite(fps):
            self.displayed_fps = float(fps)

    def sync_p95(self) -> float | None:
        return float(np.percentile(np.abs(self.sync_errors), 95)) if self.sync_errors else None


def make_app(state: LiveState, generator, song_path: Path | None, token: str | None, control):
    """The aiohttp application. `control(name, value)` applies a change from the page or OSC (prompt,
    motion, seed, mode) and returns a one-line error or None."""
    from aiohttp import WSMsgType, web

    @web.middleware
    async def require_token(request, handler):
        if token is not None:
            given = request.query.get("token") or request.cookies.get("musicviz_token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.Response(status=403, text="a token is needed: use the URL the server printed\n")
        response = await handler(request)
        if token is not None and hasattr(response, "set_cookie"):
            response.set_cookie("musicviz_token", token, httponly=True, samesite="Strict")
        return response

    async def page(request):
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def song(request):
        if song_path is None:
            raise web.HTTPNotFound()
        kind = mimetypes.guess_type(song_path.name)[0] or "application/octet-stream"
        return web.FileResponse(song_path, headers={"Content-Type": kind})

    def stats_json() -> dict:
        p95 = state.sync_p95()
        return {
            "frames_generated": generator.generated,
            "frames_displayed": state.frames_displayed,
            "displayed_fps": round(state.displayed_fps, 2),
            "generated_fps": round(generator.rate, 2),
            "sync_error_p95_ms": None if p95 is None else round(p95, 2),
            "max_gap_ms": round(max(state.gaps), 1) if state.gaps else None,
            "latency_ms": round(generator.latency * 1000, 1),
            "buffer_s": round(generator.buffered(), 3),
            "clients": len(state.clients),
            "fps": state.fps,
            "cadence": generator.frames.cadence,
            "stride": generator.frames.stride,
            "playhead_s": round(state.playhead, 3),
            "settings": vars(generator.frames.settings),
            "scheduler": {"class_name": generator.frames.pipe.scheduler.config.class_name,
                          "timestep": generator.frames.pipe.scheduler.timestep,
                          "steps": len(generator.frames.pipe.scheduler_steps)},
            "dtype": dtype_name(generator.frames.pipe.dtype),
            "error": generator.error,
            **generator.analysis(),
        }

    async def stats(request):
        return web.json_response(stats_json())

    def server_clock() -> None:
        """With no page open, a stream of the song keeps time itself: the playhead moves on in real time
        (to the song's end) and the generator follows it. An open page's clock rules."""
        now = time.monotonic()
        if state.clients or state.follows_input:
            state.clock_at = None
            return
        end = generator.frames.n_frames / state.fps
        if state.clock_at is not None:  # several streams share one clock: each moves it by the time since the last
            state.playhead = min(end, state.playhead + now - state.clock_at)
        state.clock_at, state.playing = now, state.playhead < end
        generator.follow(state.playhead, state.playing)

    async def mjpeg(request):
        response = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        last, sent = None, 0.0
        try:
            while True:
                server_clock()
                made = state.frame_at(state.playhead)
                # a new frame, or the same one again after a second: a feed that stops (paused, the song's
                # end, generation behind) still shows its picture to a reader that just joined, and stays alive
                if made is not None and (made[0] != last or time.monotonic() - sent > 1.0):
                    (last, jpeg), sent = made, time.monotonic()
                    await response.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                await asyncio.sleep(0.5 / state.fps)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def send_frame(ws, index: int) -> None:
        if index not in state.frames:  # dropped while an earlier one was being sent
            return
        seconds, jpeg, _ = state.frames[index]
        await ws.send_bytes(FRAME_HEADER.pack(index, seconds) + jpeg)

    async def websocket(request):
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=1 << 20)
        await ws.prepare(request)
        sender = asyncio.ensure_future(push_frames(ws))
        try:
            await ws.send_json({"type": "hello", "fps": state.fps, "duration": generator.frames.n_frames / state.fps,
                                "settings": vars(generator.frames.settings), "song": song_path is not None})
            state.clients.add(ws)
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue  # binary or control frames from a page mean nothing here
                await handle(ws, msg.data)
        finally:
            sender.cancel()
            state.clients.discard(ws)
        return ws

    async def push_frames(ws):
        """Every frame made, from the page's playhead on, as it is made (again, when made anew)."""
        sent = state.sent.setdefault(ws, {})
        try:
            while not ws.closed:
                waiter = state.new_frame
                floor = max(state.frames, default=0) if state.follows_input else int(state.playhead * state.fps) - 1
                for k, (_, _, version) in sorted(state.frames.items()):
                    if k >= floor and sent.get(k) != version:
                        await send_frame(ws, k)
                        sent[k] = version
                for k in [k for k in sent if k < floor - 4 * state.fps]:
                    del sent[k]
                await waiter.wait()
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            state.sent.pop(ws, None)

    async def handle(ws, text: str) -> None:
        """One message from a page; junk is answered with an error and ignored."""
        try:
            message = json.loads(text)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            await ws.send_json({"type": "error", "message": "not a JSON message with a type"})
            return
        if kind == "report":
            state.report(message)
            t = message.get("t")
            if isinstance(t, (int, float)) and np.isfinite(t):
                state.playhead = float(t)
                state.playing = not message.get("paused", True)
                generator.follow(state.playhead, state.playing)
            await ws.send_json({"type": "status", "buffer_s": round(generator.buffered(), 3),
                                "hold_s": round(generator.hold(), 3),
                                "generated_fps": round(generator.rate, 2), "cadence": generator.frames.cadence,
                                "stride": generator.frames.stride, "latency_ms": round(generator.latency * 1000, 1),
                                "error": generator.error})
        elif kind == "seek":
            t = message.get("t")
            if isinstance(t, (int, float)) and np.isfinite(t):
                state.playhead = float(t)
                state.sent.get(ws, {}).clear()  # the page keeps only the frames near its clock
                generator.seek(state.playhead)
                state.wake()
        elif kind == "set":
            name, value = message.get("name"), message.get("value")
            error = control(name, value)
            await ws.send_json({"type": "set", "name": name, "error": error,
                                "settings": vars(generator.frames.settings)})
        else:
            await ws.send_json({"type": "error", "message": f"unknown message type {str(kind)[:40]!r}"})

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/", page)
    app.router.add_get("/song", song)
    app.router.add_get("/stats", stats)
    app.router.add_get("/stream.mjpg", mjpeg)
    app.router.add_get("/ws", websocket)
    app["stats"] = stats_json
    return app


async def serve(app, host: str, port: int, ready=None) -> None:
    """Serve `app` until cancelled; `ready(url_host, port)` once listening. A port in use is one line."""
    from aiohttp import web

    # open pages and streams are cut after half a second at shutdown, not waited for (a minute by default)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise MusicvizError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if ready is not None:
        ready(site._server.sockets[0].getsockname()[1])
    try:
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def new_token(host: str) -> str | None:
    """A token for a server on a non-loopback address, None on loopback."""
    return None if is_loopback(host) else secrets.token_urlsafe(16)

