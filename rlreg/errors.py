"""Error types. Every user-facing failure is an RlregError subclass whose message names the
file, key or row at fault, so the CLI can print it without a traceback."""


class RlregError(Exception):
    """Base class: the CLI prints these as one clear line and exits with status 2."""


class ConfigError(RlregError, ValueError):
    """A config file or a dotted override is wrong (unknown key, bad type, out of range)."""


class DataError(RlregError, ValueError):
    """A data source cannot be read or holds values that cannot be used."""


class InvalidNumber(RlregError, ValueError):
    """A token sequence does not decode to a number (wrong token at a position, wrong length)."""

    def __init__(self, reason: str, position: int | None = None):
        self.reason = reason
        self.position = position
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"invalid number sequence{where}: {reason}")


class RemoteTimeout(RlregError, TimeoutError):
    """A remote call (Ray get, engine call, reward function) did not answer within its limit."""
