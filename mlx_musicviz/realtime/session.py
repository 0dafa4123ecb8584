"""`live(song, prompt)`: serve a page that shows the video of a song as it plays.

The song is analysed as `render` analyses it; frames are generated ahead of the page's audio clock
on a thread of their own and sent to every page watching; OSC (optional) and the page's controls
change the prompt, motion, seed and mode while it plays.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import webbrowser
from pathlib import Path

from ..audio import analyze
from ..checks import check_dtype, frame_size
from ..errors import MusicvizError
from ..loading import pipeline_for
from ..pipeline import DEFAULT_MODEL
from ..scheduler import check_scheduler
from .engine import Generator, LiveSettings, SongFrames
from .server import LiveState, make_app, new_token, serve

MIN_LIVE_FPS, MAX_LIVE_FPS = 1.0, 60.0


def check_port(port, name: str = "port") -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise MusicvizError(f"{name} must be a whole number from 0 to 65535, got {port!r}")
    return port


def check_free(host: str, port: int) -> None:
    """Raise MusicvizError when nothing can listen on host:port (in use, or an address not of this
    machine); port 0 (any free one) always can."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise MusicvizError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def shown_host(host: str) -> str:
    """The address to print in the page's URL: loopback as 127.0.0.1; for all addresses (0.0.0.0, ::)
    this machine's own name's address, which another screen on the network can reach."""
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        return lan_address() or host
    return host


def lan_address() -> str | None:
    """This machine's address on the network it would reach others through (a UDP socket's source
    address for a route outward: nothing is sent), or None without a route. The host name's address
    is often 127.0.0.1 or 127.0.1.1, which no other screen can reach."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: any routable address picks the outward interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def apply_change(generator: Generator, name, value) -> str | None:
    """Apply a change of `name` (prompt, motion, seed, mode) from the page or OSC; a one-line error or None."""
    kinds = {"prompt": str, "motion": float, "seed": int, "mode": str}
    if name not in kinds:
        return f"unknown setting {str(name)[:40]!r}: use one of {', '.join(kinds)}"
    try:
        if kinds[name] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds[name]) or isinstance(value, bool):
            return f"{name} takes a {kinds[name].__name__}, not {value!r:.40}"
        generator.change(**{name: value})
    except MusicvizError as e:
        return str(e)
    return None


def live(song, prompt: str, *, input=None, model=DEFAULT_MODEL, size=256, fps: float = 24, seed: int = 0,
         motion: float = 0.25, mode: str = "focus", grid: str = "quarter", host: str = "127.0.0.1", port: int = 8765,
         open_browser: bool = True, osc_port: int | None = None, batch_size: int = 1, ahead: float = 3.0,
         loras=(), scheduler: str | None = None, steps: int = 1, dtype=None, pipeline=None, on_ready=None,
         stop: threading.Event | None = None) -> None:
    """Serve the live page for `song` (a path), or with `input` for a live audio input (a device's
    index or name, see `audio_input.find_device`; song None), until interrupted (or `stop` is set).

    size: frame size as `render` takes it (256 by default: a quarter of 512's cost). fps: the song's
    frame grid, 1 to 60. host: 127.0.0.1 by default; any other address needs the token printed with
    the URL. osc_port: also take /prompt s, /motion f, /seed i, /mode s over OSC (UDP) there.
    loras: [(path, scale), ...] LoRA files fused into the model (see `load_pipeline`); scheduler: another
    scheduler's one step, e.g. "lcm", and LCM's or Euler's steps; dtype: the compute dtype (see `load_pipeline`).
    on_ready(url): called once the server listens (default: print the URL).
    Raises MusicvizError on bad input, a port in use or an unreadable song.
    """
    if not MIN_LIVE_FPS <= fps <= MAX_LIVE_FPS:
        raise MusicvizError(f"live fps must be from {MIN_LIVE_FPS:g} to {MAX_LIVE_FPS:g}, got {fps}")
    check_port(port)
    if osc_port is not None:
        check_port(osc_port, "OSC port")
    settings = LiveSettings(prompt, motion=motion, seed=seed, mode=mode, grid=grid).check()
    frame_size(size)
    check_scheduler(scheduler, steps)
    check_dtype(dtype)
    check_free(host, port)  # before the song's analysis and the model's load, which take seconds
    loop = asyncio.new_event_loop()
    if input is not None:
        if song is not None:
            raise MusicvizError("give a song or --input, not both")
        _follow_input(input, settings, lambda: pipeline_for(pipeline, model, loras, scheduler, steps, dtype), size, fps,
                      loop,
                      lambda generator, state: _serve(loop, state, generator, None, host, port, open_browser, osc_port,
                                                      on_ready, stop))
        return
    if song is None:
        raise MusicvizError("give a song to play, or --input for a live audio input")
    path = Path(song)
    features = analyze(path, fps=fps)
    pipe = pipeline_for(pipeline, model, loras, scheduler, steps, dtype)
    frames = SongFrames(pipe, features, settings, size=size, batch_size=batch_size)
    state = LiveState(frames.fps)
    generator = Generator(frames, lambda i, jpeg: loop.call_soon_threadsafe(state.add_frame, i, jpeg), ahead=ahead)
    _serve(loop, state, generator, path, host, port, open_browser, osc_port, on_ready, stop)


def _follow_input(device, settings, load, size, fps, loop, serve_with) -> None:
    """Open the input, load the pipeline (`load()`), then serve frames that follow it while a thread feeds its blocks to the analyzer."""
    from .audio_input import open_input
    from .follow import InputFrames, InputGenerator

    with open_input(device) as source:
        pipe = load()
        frames = InputFrames(pipe, settings, size=size, rate=source.rate)
        state = LiveState(fps, follows_input=True)
        latency = source.block / source.rate + float(getattr(source.stream, "latency", 0.0) or 0.0)
        generator = InputGenerator(frames, lambda i, t, jpeg: loop.call_soon_threadsafe(state.add_frame, i, jpeg, t),
                                   capture_latency=latency)

        def capture() -> None:
            try:
                for block in source:
                    frames.feed(block)
            except MusicvizError as e:  # the input went quiet or away: said on the page and in /stats
                generator.error = str(e)

        threading.Thread(target=capture, daemon=True, name="musicviz-live-capture").start()
        serve_with(generator, state)


def _serve(loop, state, generator, path, host, port, open_browser, osc_port, on_ready, stop) -> None:
    """The server on a thread of its own; generation on this one, which loaded the model."""
    token = new_token(host)
    control = lambda name, value: apply_change(generator, name, value)  # noqa: E731
    app = make_app(state, generator, path, token, control)
    listening, failed, tasks = threading.Event(), [], []

    def ready(bound_port: int) -> None:
        shown = shown_host(host)
        url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound_port}/" + (f"?token={token}" if token else "")
        (on_ready or (lambda u: print(f"live: {u}  (Ctrl-C stops)", flush=True)))(url)
        if open_browser:
            webbrowser.open(url)
        listening.set()

    def run_server() -> None:
        asyncio.set_event_loop(loop)
        tasks.append(loop.create_task(serve(app, host, port, ready)))
        try:
            loop.run_until_complete(tasks[0])
        except asyncio.CancelledError:
            pass
        except MusicvizError as e:
            failed.append(e)
        finally:
            listening.set()
            # handlers the shutdown cut short (open pages, streams) end here, not as "destroyed but pending"
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    osc = None
    if osc_port is not None:  # listening before the URL is printed: a client may send at once
        from .osc import start_osc

        osc = start_osc(host, osc_port, control)
    server = threading.Thread(target=run_server, daemon=True, name="musicviz-live-server")
    server.start()
    listening.wait()
    if failed:
        if osc is not None:
            osc.shutdown()
        raise failed[0]
    try:
        watcher = None
        if stop is not None:  # the caller's stop ends generation as stop() would
            watcher = threading.Thread(target=lambda: (stop.wait(), generator.stop()), daemon=True)
            watcher.start()
        generator.run()
    finally:
        generator.stop()
        if osc is not None:
            osc.shutdown()
        if not loop.is_closed():
            loop.call_soon_threadsafe(tasks[0].cancel)
        server.join(timeout=5)
