"""The one way rlreg writes a file: a temporary file beside the target, flushed and fsynced, then
renamed over it. A reader sees the old file or the new one, never half of one, and a crash leaves
the old one in place. Directories are swapped in whole the same way (replace_dir)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, newline: str | None = None) -> Iterator[IO[str]]:
    """A text stream whose content replaces `path` when the block ends without an error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline=newline) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes it owner-only; results are for sharing
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as stream:
        stream.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, **dumps: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, **dumps) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """(line, parsed value) for each line of a JSON-lines file that parses: a line cut short by a
    crash is skipped. A missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append((line, json.loads(line)))
        except ValueError:
            continue
    return out


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Swap a fully written directory into place, so a crash never leaves half a model there.
    A crash between the two renames leaves `final` missing and `final.old` whole: put it back first."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final
