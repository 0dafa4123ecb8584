"""Live mode: its frames are the rendered video's; the server in a real headless Chromium keeps picture
and sound in sync; OSC, tokens, /stream.mjpg, and bad clients and input."""

import asyncio
import json
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from contextlib import contextmanager

import numpy as np
import pytest

SR = 22050


def beat_song(path, seconds: float = 16.0, bpm: float = 120.0) -> str:
    """A WAV of a 330 Hz tone struck on every beat, with a low drone under it."""
    t = np.arange(int(SR * seconds)) / SR
    since_beat = t % (60.0 / bpm)
    y = 0.5 * np.sin(2 * np.pi * 330 * t) * np.exp(-since_beat * 12) + 0.05 * np.sin(2 * np.pi * 110 * t)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(y, -1, 1) * 32767).astype("<i2").tobytes())
    return str(path)


@contextmanager
def live_server(song, *args, timeout: float = 120):
    """`musicviz-mlx live SONG` in a process of its own on a free port; yields (url, process)."""
    cmd = [sys.executable, "-m", "mlx_musicviz.cli", "live", str(song), "-p", "a lighthouse", "--model", "random:tiny",
           "--size", "128", "--no-open", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        match = re.match(r"live: (\S+)", line)
        assert match, f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield match[1], proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def stats_url(url: str) -> str:
    base, _, query = url.partition("?")
    return base + "stats" + (f"?{query}" if query else "")


def test_live_frames_are_the_rendered_videos_frames():
    """With cadence 1 (and 3) a live frame equals the rendered video's frame for the same settings,
    from whatever frame live generation starts at (within float rounding: the batches differ)."""
    from mlx_musicviz.audio import analyze
    from mlx_musicviz.note_prompts import default_note_prompts
    from mlx_musicviz.pipeline import Pipeline
    from mlx_musicviz.realtime.engine import PACES, LiveSettings, SongFrames
    from mlx_musicviz.rendering import denoised_latents, make_walkers

    t = np.arange(SR * 3) / SR
    y = (0.3 * np.sin(2 * np.pi * 330 * t) * (t % 0.5 < 0.1)).astype(np.float32)
    features = analyze((y, SR), fps=8)
    pipe = Pipeline.random("tiny")
    embeds = pipe.encode_prompt(["x", *default_note_prompts("x")])
    for cadence in (1, 3):
        noise, prompt = make_walkers(features, pipe, embeds, 1, 64, 0)
        rendered = {int(k): im for frames, latents in denoised_latents(pipe, noise, prompt, features.n_frames, 2, cadence)
                    for k, im in zip(frames, np.array(pipe.decode(latents)))}
        frames = SongFrames(pipe, features, LiveSettings("x"), size=64)
        frames.pace = PACES.index((cadence, 1))
        got, first = {}, 5  # as after a seek to frame 5
        while first < features.n_frames:
            chunk = frames.chunk(first)
            got.update(chunk)
            first = chunk[-1][0] + 1
        assert sorted(got) == list(range(5, features.n_frames))
        for k, image in got.items():  # batches differ from the render's: float rounding, one level at most
            diff = np.abs(image.astype(int) - rendered[k])
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (cadence, k, diff.max(), (diff > 0).mean())


def test_the_pace_steps_down_when_generation_falls_short_and_back_up_with_room():
    from mlx_musicviz.realtime.engine import PACES, SongFrames

    frames = SongFrames.__new__(SongFrames)
    frames.features = type("F", (), {"fps": 24.0})()
    frames.pace = 0
    assert frames.adapt(30.0) is False and frames.pace == 0  # keeps up
    assert frames.adapt(10.0) and PACES[frames.pace] == (2, 1)
    frames.pace = len(PACES) - 1
    assert frames.adapt(1.0) is False  # nothing milder left to drop
    assert frames.adapt(500.0) and frames.pace == len(PACES) - 2


class SlowFrames:
    """Stands in for `SongFrames`: makes `per_chunk` frames per chunk at `rate` frames a second of wall time."""

    def __init__(self, n_frames, fps, rate, per_chunk=4):
        self.n_frames, self.fps, self.stride, self.rate, self.per_chunk = n_frames, fps, 1, rate, per_chunk
        self.image = np.zeros((8, 8, 3), np.uint8)

    def chunk(self, first):
        time.sleep(self.per_chunk / self.rate)
        return [(k, self.image) for k in range(first, min(first + self.per_chunk, self.n_frames))]

    def take_up(self):
        pass

    def adapt(self, rate):
        return False


def test_a_slow_generator_buffers_the_whole_hold_so_the_page_starts():
    """Generating at half the song's speed, the page asks for a hold longer than the usual look-ahead;
    the generator keeps making frames until the buffer covers it (it stopped at the look-ahead, and the
    page waited for ever)."""
    from mlx_musicviz.realtime.engine import Generator

    gen = Generator(SlowFrames(n_frames=200, fps=50, rate=25), publish=lambda index, jpeg: None, ahead=0.5)
    deadline = time.monotonic() + 30
    while gen.buffered() < gen.hold():
        assert time.monotonic() < deadline, (gen.buffered(), gen.hold())
        assert gen.step(), f"the generator stopped at {gen.buffered():.2f} s of the {gen.hold():.2f} s the page waits for"
    assert gen.hold() > 1.0  # longer than the look-ahead (0.5 s) and the least hold


def test_a_paused_page_gets_the_frame_at_its_playhead_even_if_skipped_while_playing():
    """While playing, the generator skips frames it cannot make in time; when the page then pauses on
    one of them (the buffer ran dry), that frame is made first, so the buffer fills and playback goes on
    (it made only later frames, the buffer stayed empty and the page waited for ever: CI saw it)."""
    from mlx_musicviz.realtime.engine import Generator

    frames = SlowFrames(n_frames=400, fps=12, rate=1000)
    frames.stride = 4
    gen = Generator(frames, publish=lambda index, jpeg: None)
    gen.made = {0, 4, 8, 12, 20, 24}  # 16 was skipped while playing
    gen.follow(19.9 / 12, playing=False)  # the page paused at frame 19, whose keyframe is 16
    assert gen.buffered() == 0.0
    for _ in range(20):
        gen.step()
    assert 16 in gen.made and gen.buffered() >= gen.hold()


def chromium():
    """Debian's headless Chromium through selenium, autoplay allowed."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                "--window-size=640,480"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def audio_clock(browser) -> tuple[float, bool]:
    return tuple(browser.execute_script("const a = document.getElementById('audio'); return [a.currentTime, a.paused];"))


@pytest.mark.slow
def test_the_page_plays_in_sync_in_a_real_browser(tmp_path):
    """Headless Chromium plays the page: it holds until the buffer lasts, then plays; after 10 s of
    playback at least 90 % of the frames due were shown (every frame on the song's grid, or every
    stride-th where generation had to lower the fps) and the p95 sync error is at most one frame
    interval; a prompt change while playing leaves no gap over two frame intervals; the screenshot
    shows a frame."""
    from PIL import Image

    fps = 12
    song = beat_song(tmp_path / "beat.wav", seconds=16)
    with live_server(song, "--fps", str(fps)) as (url, proc):
        browser = chromium()
        try:
            browser.get(url)
            deadline = time.monotonic() + 120
            while audio_clock(browser)[1] or audio_clock(browser)[0] <= 0:
                assert time.monotonic() < deadline, f"the page never played: {get_json(stats_url(url))}"
                time.sleep(0.1)
            first = get_json(stats_url(url))
            start = first["frames_displayed"]
            t0 = audio_clock(browser)[0]
            time.sleep(4)
            browser.execute_script("document.getElementById('prompt').value = 'a red lighthouse';"
                                   "set('prompt', 'a red lighthouse');")
            deadline = time.monotonic() + 60
            while audio_clock(browser)[0] - t0 < 10:
                assert time.monotonic() < deadline, f"playback stalled: {audio_clock(browser)} {get_json(stats_url(url))}"
                time.sleep(0.1)
            time.sleep(0.6)  # the page's next report
            stats = get_json(stats_url(url))
            played = audio_clock(browser)[0] - t0
            browser.save_screenshot(str(tmp_path / "page.png"))
        finally:
            browser.quit()
    shown = stats["frames_displayed"] - start
    stride = max(first["stride"], stats["stride"])
    print(f"live at 128x128, {fps} fps: {shown} frames shown in {played:.1f} s of playback (stride {stride}, "
          f"cadence {stats['cadence']}), sync p95 {stats['sync_error_p95_ms']} ms, largest gap {stats['max_gap_ms']} ms")
    assert shown >= 0.9 * played * fps / stride, stats
    assert stats["sync_error_p95_ms"] <= 1000 / fps, stats
    assert stats["max_gap_ms"] <= 2 * 1000 * stride / fps, stats
    assert stats["settings"]["prompt"] == "a red lighthouse"
    picture = np.asarray(Image.open(tmp_path / "page.png").convert("L"), dtype=np.float32)
    assert picture.std() > 10, "the page shows no frame"


def test_osc_changes_prompt_and_motion_and_junk_is_ignored(tmp_path):
    from pythonosc.udp_client import SimpleUDPClient

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        osc_port = s.getsockname()[1]
    with live_server(beat_song(tmp_path / "beat.wav", 4), "--osc", str(osc_port)) as (url, proc):
        client = SimpleUDPClient("127.0.0.1", osc_port)
        client.send_message("/motion", "fast")  # the wrong type: reported, ignored
        client.send_message("/nonsense", 1)
        client.send_message("/prompt", "a green lighthouse")
        client.send_message("/motion", 0.6)
        deadline = time.monotonic() + 30
        while True:
            settings = get_json(stats_url(url))["settings"]
            if settings["prompt"] == "a green lighthouse" and settings["motion"] == pytest.approx(0.6):
                break
            assert time.monotonic() < deadline, settings
            time.sleep(0.2)
        assert proc.poll() is None
    err = proc.stderr.read()
    assert "osc: motion takes a float, not 'fast'" in err and "osc: unknown OSC address '/nonsense'" in err, err


def test_bad_clients_do_not_stop_the_server_and_mjpeg_serves_frames(tmp_path):
    """Junk text, binary and half-open connections on the WebSocket, then /stream.mjpg: the server
    answers the junk, keeps running and serves JPEG frames; Ctrl-C (SIGINT) ends it cleanly."""
    import aiohttp

    with live_server(beat_song(tmp_path / "beat.wav", 4)) as (url, proc):
        base = url.rstrip("/")

        async def junk():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(base.replace("http", "ws") + "/ws") as ws:
                    hello = await ws.receive_json()
                    assert hello["type"] == "hello"
                    await ws.send_str("{not json")
                    replies = [await ws.receive() for _ in range(3)]
                    await ws.send_bytes(b"\x00\xff" * 100)
                    await ws.send_str(json.dumps({"type": "set", "name": "seed", "value": "x"}))
                    await ws.send_str(json.dumps({"type": "report", "t": "nan", "displayed": -5, "sync_ms": ["a"]}))
                    await ws.send_str(json.dumps({"type": "what"}))
                    wanted = ("not a JSON message with a type", "seed takes a int", "unknown message type")
                    for _ in range(500):  # frames and status messages come between the answers
                        replies.append(await ws.receive(timeout=30))
                        if all(any(w in str(r.data) for r in replies) for w in wanted):
                            break
                    return replies
                # a second client that just goes away
            return None

        replies = asyncio.run(junk())
        texts = " ".join(str(r.data) for r in replies)
        assert "not a JSON message with a type" in texts and "seed takes a int" in texts and "unknown message type" in texts
        reader = urllib.request.urlopen(base + "/stream.mjpg", timeout=30)
        head = [reader.readline() for _ in range(4)]
        assert head[:2] == [b"--frame\r\n", b"Content-Type: image/jpeg\r\n"] and head[3] == b"\r\n", head
        jpeg = reader.read(int(head[2].split(b":")[1]))
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"  # a whole JPEG
        reader.close()
        assert get_json(stats_url(url))["clients"] == 0
        proc.send_signal(subprocess.signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "live: stopped", err


def test_another_address_needs_the_token(tmp_path):
    """Off loopback the URL carries a token and this machine's network address, and requests without the
    token are refused. (The server samples with LCM in 2 steps here: /stats says so.)"""
    with live_server(beat_song(tmp_path / "beat.wav", 4), "--host", "0.0.0.0", "--scheduler", "lcm", "--steps",
                     "2") as (url, proc):
        assert "?token=" in url
        port = re.search(r":(\d+)/", url)[1]
        token = url.split("token=")[1]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10)
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?token=wrong", timeout=10)
        assert get_json(f"http://127.0.0.1:{port}/stats?token={token}")["clients"] == 0
        # the printed URL names this machine's network address (another screen cannot reach 127.x) and works
        from mlx_musicviz.realtime.session import lan_address

        host = re.match(r"http://([^:/]+)", url)[1]
        assert host == (lan_address() or "0.0.0.0") and not host.startswith("127.")
        stats = get_json(stats_url(url))
        assert stats["clients"] == 0
        assert stats["scheduler"] == {"class_name": "LCMScheduler", "timestep": 999, "steps": 2}, stats["scheduler"]
        assert stats["dtype"] == "float32"  # the CPU's default


def test_bad_input_is_one_line(tmp_path):
    """A port in use, an unreadable song, a bad fps or size: one line each and exit 1, before the model loads."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "mlx_musicviz.cli", "live", "--size", "64", "--port", "0", *args, "-p", "x",
                               "--model", "random:tiny", "--no-open"], capture_output=True, text=True, timeout=120)

    song = beat_song(tmp_path / "beat.wav", 2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run(song, "--port", str(taken.getsockname()[1]))
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("not audio")
    for result, needle in ((busy, "cannot listen on 127.0.0.1:"), (run(str(not_audio)), "cannot decode"),
                           (run(song, "--fps", "500"), "live fps must be from 1 to 60"),
                           (run(song, "--size", "100"), "size 100 is not supported")):
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


def test_the_stream_keeps_time_itself_when_no_page_plays(tmp_path):
    """/stream.mjpg with no page open (OBS taking the feed of `live --no-open`): the server's clock moves
    the playhead in real time and the stream shows the frames it passes."""
    with live_server(beat_song(tmp_path / "beat.wav", 8)) as (url, proc):
        reader = urllib.request.urlopen(url.rstrip("/") + "/stream.mjpg", timeout=60)
        t0, jpegs = time.monotonic(), set()
        while time.monotonic() - t0 < 5:
            head = [reader.readline() for _ in range(4)]
            assert head[0] == b"--frame\r\n", head
            jpegs.add(reader.read(int(head[2].split(b":")[1])))
            reader.readline()
        playhead = get_json(stats_url(url))["playhead_s"]
        reader.close()
        assert 3.5 < playhead <= 8.0, playhead  # about the time the stream was watched
        assert len(jpegs) >= 2  # the picture moves with it
