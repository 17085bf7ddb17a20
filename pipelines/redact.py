"""Secrets never leave a job: one redaction for the manifest, the report, the logs and every line a job prints.

The values of secret-looking flags are replaced by <redacted>, and so are the secrets inside any other value: the
password of a URL and signature, token or key parameters. A job (`python -m pipelines.<job>`) also passes all it
prints through `scrubbed`, with the values of its secret flags added, so a log line, an error or a traceback that
quotes a URL or a flag's value shows it redacted (pipelines/__init__.py).
"""
from __future__ import annotations

import io
import re
from typing import Sequence

# Values of flags with these words in their names never reach the manifest: Beam's --s3_access_key_id,
# --s3_secret_access_key, --s3_session_token and --azure_connection_string, and any flag named like them.
SECRET_FLAG = re.compile(r"secret|token|passw|credential|connection_string|access_key|_key$", re.IGNORECASE)
# Secrets inside any other value: the password of a URL (https://user:PASS@host) and signature, token or key
# parameters of a URL or a connection string (?X-Amz-Signature=..., ;AccountKey=...).
_URL_PASSWORD = re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+(?=@)", re.IGNORECASE)
_SECRET_PARAMETER = re.compile(r"(?P<keep>(?:^|[?&;])[\w.-]*(?:sig|signature|token|secret|passw|pwd|key|credential)"
                               r"[\w.-]*=)[^&;\s]+", re.IGNORECASE)
def scrubbed(value: str) -> str:
    """`value` with the secrets a URL or connection string may carry replaced by <redacted>."""
    value = _URL_PASSWORD.sub(r"\g<keep><redacted>", value)
    return _SECRET_PARAMETER.sub(r"\g<keep><redacted>", value)


def redacted(argv: Sequence[str]) -> list[str]:
    """The command line with the value of every secret-looking flag replaced, and secrets inside other values
    scrubbed, as the manifest records it."""
    out, hide_next = [], False
    for arg in argv:
        flag, equals, value = arg.partition("=")
        secret = arg.startswith("-") and bool(SECRET_FLAG.search(flag.lstrip("-")))
        if hide_next:
            out.append("<redacted>")
        elif arg.startswith("-") and equals:
            out.append(f"{flag}=<redacted>" if secret else f"{flag}={scrubbed(value)}")
        else:
            out.append(scrubbed(arg))
        hide_next = secret and not equals
    return out


def secret_values(argv: Sequence[str]) -> list[str]:
    """The values of the secret-looking flags of a command line (--flag VALUE and --flag=VALUE)."""
    values = []
    for arg, following in zip(argv, [*argv[1:], None]):
        flag, equals, value = arg.partition("=")
        if arg.startswith("-") and SECRET_FLAG.search(flag.lstrip("-")):
            value = value if equals else following
            if value and not value.startswith("-"):
                values.append(value)
    return values


class RedactingStream(io.TextIOBase):
    """A text stream that writes everything through `scrubbed`, with the given secret values replaced too: where
    they stand whole, never inside a word, so that a short secret ("y") neither mangles every line it occurs in
    nor shows where it was cut out."""

    def __init__(self, stream, secrets: Sequence[str]):
        self.stream = stream
        whole = "|".join(re.escape(secret) for secret in sorted(set(secrets), key=len, reverse=True))
        self.secrets = re.compile(rf"(?<![\w])(?:{whole})(?![\w])") if whole else None

    def write(self, text: str) -> int:
        if self.secrets:
            text = self.secrets.sub("<redacted>", text)
        self.stream.write(scrubbed(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()
