"""Windows error numbers and their system messages, as netsh and the HTTP Server API report them.

Every failure a user sees from the configuration layer carries one of these, so the CLI can print
exactly what `netsh http` prints on Windows.
"""

from __future__ import annotations

ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_SHARING_VIOLATION = 32
ERROR_INVALID_PARAMETER = 87
ERROR_ALREADY_EXISTS = 183
ERROR_NO_SUCH_LOGON_SESSION = 1312
ERROR_NONE_MAPPED = 1332

MESSAGES: dict[int, str] = {
    ERROR_FILE_NOT_FOUND: "The system cannot find the file specified.",
    ERROR_ACCESS_DENIED: "Access is denied.",
    ERROR_SHARING_VIOLATION: (
        "The process cannot access the file because it is being used by another process."
    ),
    ERROR_INVALID_PARAMETER: "The parameter is incorrect.",
    ERROR_ALREADY_EXISTS: "Cannot create a file when that file already exists.",
    ERROR_NO_SUCH_LOGON_SESSION: (
        "A specified logon session does not exist. It may already have been terminated."
    ),
    ERROR_NONE_MAPPED: "No mapping between account names and security IDs was done.",
}


class WinError(Exception):
    """A failure with a Windows error number; `detail` says what exactly was wrong, for logs."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"Error {code}: {MESSAGES.get(code, 'Unknown error.')}"
                         + (f" ({detail})" if detail else ""))

    @property
    def message(self) -> str:
        """The Windows system message for the code, as netsh prints it."""
        return MESSAGES.get(self.code, f"Unknown error {self.code}.")
