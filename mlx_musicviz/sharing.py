"""One render shared among processes started by `mlx.launch` (on one machine or several), through
`mx.distributed`.

Every process analyses the song and loads the model itself; the video is cut into units of whole
keyframe batches (about 10 s of video), which are made anywhere and give the same frames as one
process makes. Work goes out in rounds: each process makes as many units in a round as its speed in
the last round allows (a process twice as fast takes two), encodes them, and every process's segments
travel to rank 0 through `all_gather`; rank 0 keeps them beside the target (resumable, as a render
alone is) and joins them with the song at the end. No shared file system is needed: each host reads
its own copy of the song and the model.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import MusicvizError

MESSAGE_BYTES = 512  # an error line, as it travels between processes
MOST_PER_ROUND = 4  # units one process takes in a round, however fast it is


def launched_group():
    """The `mx.distributed` group of a process started by `mlx.launch` (or mpirun) with others, else None."""
    if not any(k in os.environ for k in ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
        return None
    group = mx.distributed.init(strict=False)
    return group if group.size() > 1 else None


def is_helper() -> bool:
    """Whether this process is one of a launched group's ranks other than 0 (which says nothing)."""
    return os.environ.get("MLX_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")) != "0"


def _gather(group, array: np.ndarray) -> np.ndarray:
    """(size, *array.shape): `array` from every process, in rank order, on every process."""
    gathered = mx.distributed.all_gather(mx.array(array)[None], group=group)
    return np.array(gathered)


def agree(group, error: str | None) -> None:
    """Every process says whether it is ready (`error` None) or why not; if any is not, each raises
    MusicvizError naming the first one's rank and host. A barrier otherwise."""
    line = "" if error is None else f"rank {group.rank()} on {socket.gethostname()}: {error}"
    raw = np.zeros(MESSAGE_BYTES, np.uint8)
    data = line.encode()[:MESSAGE_BYTES]
    raw[:len(data)] = np.frombuffer(data, np.uint8)
    for row in _gather(group, raw):
        said = bytes(row).rstrip(b"\0").decode(errors="replace")
        if said:
            raise MusicvizError(said)


def rank0_says(group, flag: bool) -> bool:
    """Rank 0's `flag`, on every process of `group` (`flag` itself alone): what rank 0 sees decides."""
    if group is None:
        return bool(flag)
    mine = np.array([int(bool(flag)) if group.rank() == 0 else 0], np.int32)
    return bool(np.array(mx.distributed.all_sum(mx.array(mine), group=group))[0])


def gather_bytes(group, data: bytes, times: dict | None = None) -> list[bytes]:
    """`data` of every process, in rank order, on every process. `times` adds up the seconds spent
    waiting for the others ("waiting": the lengths' gather is a barrier) and moving the bytes ("transfer")."""
    t = time.perf_counter()
    lengths = _gather(group, np.array([len(data)], np.int64))[:, 0]
    t_moved = time.perf_counter()
    padded = np.zeros(max(int(lengths.max()), 1), np.uint8)
    padded[:len(data)] = np.frombuffer(data, np.uint8)
    rows = _gather(group, padded)
    if times is not None:
        times["waiting"] = times.get("waiting", 0.0) + t_moved - t
        times["transfer"] = times.get("transfer", 0.0) + time.perf_counter() - t_moved
    return [bytes(row[:length]) for row, length in zip(rows, lengths)]


def unit_frames(fps: float, batch_size: int, cadence: int, seconds: float) -> int:
    """Frames in a unit: whole keyframe batches (cadence * batch_size frames), about `seconds` of video.
    Units start where one process's batches start, so every frame is computed in the same batch."""
    step = cadence * batch_size
    return step * max(1, round(fps * seconds / step))


def shares(speeds: np.ndarray) -> np.ndarray:
    """Units each process takes in a round, from its speed (units per second) in the last one: the
    slowest takes 1, the others in proportion, at most MOST_PER_ROUND."""
    slowest = max(float(speeds.min()), 1e-9)
    return np.clip(np.round(speeds / slowest), 1, MOST_PER_ROUND).astype(int)


def encode_unit(images: np.ndarray, width: int, height: int, fps: float, crf: int) -> bytes:
    """H.264 MP4 bytes of one unit's frames, encoded as `SegmentedVideo` encodes a segment."""
    from .video import VideoWriter

    with tempfile.TemporaryDirectory(prefix="musicviz-unit-") as folder:
        writer = VideoWriter(Path(folder) / "unit.mp4", width, height, fps, crf=crf)
        try:
            writer.write(images)
            return writer.close().read_bytes()
        except BaseException:
            writer.abort()
            raise


def share_render(group, video, make_unit, encode, total: int, progress=None) -> dict:
    """Make the units `video` (rank 0's SegmentedVideo, None elsewhere) is missing, shared among the
    processes of `group`: `make_unit(first)` gives a unit's frames, `encode(frames)` its segment.
    Returns {"model": s, "encode": s, "units": made here, "waiting": s, "transfer": s, "bytes": moved}."""
    rank, size = group.rank(), group.size()
    missing = video.missing() if video else []
    # rank 0 knows what is kept: everyone learns it (a sum where only rank 0 adds anything)
    count = int(np.array(mx.distributed.all_sum(mx.array([len(missing)]), group=group))[0])
    listed = np.zeros(count, np.int32)
    listed[:len(missing)] = missing
    missing = [int(v) for v in np.array(mx.distributed.all_sum(mx.array(listed), group=group))] if count else []
    speeds = np.ones(size)
    times = {"model": 0.0, "encode": 0.0, "units": 0, "waiting": 0.0, "transfer": 0.0, "bytes": 0}
    while missing:
        take = shares(speeds)
        starts = np.concatenate([[0], np.cumsum(take)])
        mine = missing[starts[rank]:starts[rank + 1]]
        missing = missing[starts[-1]:]
        t = time.perf_counter()
        segments = []
        for first in mine:
            t_model = time.perf_counter()
            frames = make_unit(first)
            t_encode = time.perf_counter()
            segments.append((first, encode(frames)))
            times["model"] += t_encode - t_model
            times["encode"] += time.perf_counter() - t_encode
        times["units"] += len(mine)
        spent = time.perf_counter() - t
        payload = b"".join(len(data).to_bytes(8, "little") + first.to_bytes(8, "little") + data
                           for first, data in segments)
        everyone = gather_bytes(group, payload, times)
        times["bytes"] += sum(map(len, everyone))
        measured = _gather(group, np.array([len(mine) / max(spent, 1e-6)], np.float32))[:, 0]
        speeds = np.where(measured > 0, measured, speeds)  # a process left idle keeps its last speed
        if video is not None:
            for blob in everyone:
                at = 0
                while at < len(blob):
                    length, first = int.from_bytes(blob[at:at + 8], "little"), int.from_bytes(blob[at + 8:at + 16], "little")
                    video.keep(first, blob[at + 16:at + 16 + length])
                    at += 16 + length
            if progress is not None:
                progress(video.frames_done, total)
    return times
