"""The codec's one error type: whatever bytes arrive, decoding fails only with this."""


class CodecError(ValueError):
    """Bytes that are not a valid frame or not a valid payload for their message type."""
