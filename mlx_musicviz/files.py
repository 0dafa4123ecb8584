"""Output files: checked before any work starts, written atomically.

Every file the project writes goes to a temporary name beside its target and is renamed into
place only once complete, so a failure or Ctrl-C never leaves a half-written file at the target.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import MusicvizError

# The longest name written beside an output NAME is a render's lock, ".NAME.parts.lock": 12 bytes more.
BESIDE_NAME_EXTRA = 12


def check_output_path(output: str | os.PathLike, example: str = "video.mp4") -> Path:
    """The output path, after checking it can be written (without creating anything); `example`: a file
    name the message for a folder suggests."""
    path = Path(output).expanduser()
    try:
        return _check_output_path(path, example)
    except OSError as e:  # e.g. a folder name in the path longer than the file system allows
        raise MusicvizError(f"cannot write {path}: {e.strerror or e}") from None


def _check_output_path(path: Path, example: str) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        longest = _name_max(parent) - BESIDE_NAME_EXTRA
        if len(os.fsencode(path.name)) > longest:
            raise MusicvizError(f"the output's name is {len(os.fsencode(path.name))} bytes long: at most {longest} "
                                f"here (the file system allows {longest + BESIDE_NAME_EXTRA}, and the working files "
                                "beside it need the rest)")
    if path.is_dir():
        raise MusicvizError(f"output {path} is a folder; give a file name such as {path / example}")
    if not parent.is_dir():
        raise MusicvizError(f"output folder does not exist: {parent}")
    probe = None
    try:  # os.access says yes to root even on read-only mounts such as /proc: try for real
        fd, probe = tempfile.mkstemp(prefix=".musicviz-probe-", dir=parent)
        os.close(fd)
    except OSError:
        probe = None
        raise MusicvizError(f"output folder is not writable: {parent}") from None
    finally:
        if probe:
            os.unlink(probe)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MusicvizError(f"output folder is not writable: {parent}")
    return path


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that the file system holding `folder` allows."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer
        return 255


def temporary_beside(path: Path, suffix: str) -> str:
    """Create an empty file with a fresh hidden name beside `path` and return its name.

    Created with mode 0666 less the umask, as a plain open() would (mkstemp makes 0600, which the
    finished file would keep); reading the umask instead would mean setting it process-wide for a
    moment, a race with the threads that encode video.
    """
    for _ in range(100):
        name = path.parent / f".{path.stem}-{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(name)
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def atomic_output(path: str | os.PathLike, make_parents: bool = False):
    """Yield a temporary path beside `path` to write; it is renamed onto `path` when the block
    ends without error and removed otherwise."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = temporary_beside(path, path.suffix)
    except OSError as e:
        raise MusicvizError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
