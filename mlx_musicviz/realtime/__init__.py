"""Live mode (`mlx_musicviz.live`, `musicviz-mlx live`): frames shown in a browser page as the music
plays, from a song file or a live audio input.

analyzer.py: the causal analyzer (features and beats with no look-ahead); audio_input.py: input
devices through PortAudio; engine.py: a song's frames ahead of its playhead; follow.py: frames that
follow a live input; server.py and page.html: the page, WebSocket, /stats and /stream.mjpg;
osc.py: OSC control; session.py: `live()`, which ties them together.
"""

from .session import live

__all__ = ["live"]
