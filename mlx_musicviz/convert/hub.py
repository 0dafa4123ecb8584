"""Finding a checkpoint: a local folder, or a model-hub repo id downloaded with huggingface_hub."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MusicvizError

# What a diffusers repo holds that the port needs; pickles and ONNX exports are left behind.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def looks_like_repo_id(source: str) -> bool:
    parts = str(source).split("/")
    return len(parts) == 2 and all(parts) and not str(source).startswith((".", "/", "~"))


def resolve_source(source: str | os.PathLike, revision: str | None = None,
                   allow_patterns: list[str] = ALLOW_PATTERNS) -> tuple[Path, dict]:
    """Local folder for `source` and a record {source, revision}.

    A repo id (`owner/name`) is downloaded (or found in the cache) with huggingface_hub, only the
    files matching `allow_patterns`; HF_HOME and HF_HUB_OFFLINE are honoured. Errors are one-line
    `MusicvizError`s.
    """
    path = Path(os.path.expanduser(str(source)))
    if path.exists():
        if not path.is_dir():
            raise MusicvizError(f"{path} is a file; a model is a folder (diffusers layout) or a hub repo id")
        return path, {"source": str(path.resolve()), "revision": None}
    if not looks_like_repo_id(str(source)):
        raise MusicvizError(f"model not found: {source} is neither a folder nor a hub repo id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - a runtime dependency
        raise MusicvizError("huggingface_hub is needed to download models: pip install huggingface_hub") from None
    try:
        folder = snapshot_download(str(source), revision=revision, allow_patterns=allow_patterns)
    except LocalEntryNotFoundError:
        raise MusicvizError(
            f"model {source} is not in the local cache and cannot be downloaded (offline or no network); "
            "download it once online, or pass a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise MusicvizError(f"model {source} does not exist on the hub (or is private)") from None
    except Exception as e:  # network errors come in many types
        raise MusicvizError(f"cannot download {source}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    folder = Path(folder)
    return folder, {"source": str(source), "revision": revision or folder.name}
