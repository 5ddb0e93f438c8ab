"""The agent's own log: one line per connection event and per request, to stderr and to a file.

Why not the `logging` module's global tree: tests run several agents in one process and each must
write its own `<home>/Logs/OctopusTentacle.txt` (the file name the real Tentacle uses, so support
instructions carry over). Lines are written whole and flushed at once; the file rotates by size.
"""

from __future__ import annotations

import datetime as _dt
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["LOG_FILE_NAME", "AgentLog"]

LOG_FILE_NAME = "OctopusTentacle.txt"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3

Clock = Callable[[], _dt.datetime]


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class AgentLog:
    """Writes `2025-01-31 12:00:00.123 +00:00  INFO  message` lines to stderr and a file.

    `path=None` logs to the stream only; `stream=None` to the file only. The file rotates to
    `OctopusTentacle.1.txt` … `.{keep}.txt` when it passes `max_bytes`. Safe to call from threads.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        stream: TextIO | None = sys.stderr,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        clock: Clock = _utcnow,
    ) -> None:
        self.path = path
        self.stream = stream
        self.max_bytes = max_bytes
        self.keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def info(self, message: str) -> None:
        self.write("INFO", message)

    def warning(self, message: str) -> None:
        self.write("WARN", message)

    def error(self, message: str) -> None:
        self.write("ERROR", message)

    def write(self, level: str, message: str) -> None:
        """One line (newlines inside `message` are kept on continuation lines, indented)."""
        stamp = self._clock().astimezone(_dt.timezone.utc)
        text = stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d} +00:00"
        body = message.replace("\r\n", "\n").replace("\n", "\n    ")
        line = f"{text}  {level:<5} {body}\n"
        with self._lock:
            if self.stream is not None:
                try:
                    self.stream.write(line)
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
            if self._file is not None:
                try:
                    self._file.write(line)
                    self._file.flush()
                    if self._file.tell() > self.max_bytes:
                        self._rotate()
                except (OSError, ValueError):
                    pass

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        self._file.close()
        stem, suffix = self.path.stem, self.path.suffix
        for index in range(self.keep, 0, -1):
            older = self.path.with_name(f"{stem}.{index}{suffix}")
            newer = self.path if index == 1 else self.path.with_name(f"{stem}.{index - 1}{suffix}")
            if newer.exists():
                newer.replace(older)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
