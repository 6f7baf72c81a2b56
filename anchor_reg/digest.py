"""Content digests: one hex string that changes whenever the hashed content does.

Every digest the project records (a base model's fingerprint, an anchor
store's digest, the training rows' digest, a preparation's input fingerprint)
is :func:`content_digest` of a sequence of parts, hashed in order as one
stream: bytes-like objects as they are, ``str`` as UTF-8 text, and
``pathlib.Path`` as the content of that file (read in 1 MiB blocks).
"""
import hashlib
import pathlib

ALGORITHMS = {
    "sha256": hashlib.sha256,
    "blake2b": lambda: hashlib.blake2b(digest_size=16),  # 128-bit: faster on large arrays
}


def content_digest(parts, algorithm="sha256"):
    """Hex digest of ``parts`` hashed in order.

    Arguments
    ---------
    parts : iterable
        ``bytes`` / ``bytearray`` / a contiguous numpy array (its bytes), ``str``
        (UTF-8) or ``pathlib.Path`` (the file's content).
    algorithm : str
        ``sha256`` or ``blake2b`` (16-byte digest).

    Returns
    -------
    str

    Example
    -------
    >>> content_digest(["a", b"b"]) == hashlib.sha256(b"ab").hexdigest()
    True
    """
    hasher = ALGORITHMS[algorithm]()
    for part in parts:
        if isinstance(part, str):
            hasher.update(part.encode("utf-8"))
        elif isinstance(part, pathlib.Path):
            with open(part, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    hasher.update(block)
        else:
            hasher.update(part)
    return hasher.hexdigest()
