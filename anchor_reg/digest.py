"""Content digests: one hex string that changes whenever the hashed content does."""
import hashlib
import pathlib

ALGORITHMS = {"sha256": hashlib.sha256, "blake2b": lambda: hashlib.blake2b(digest_size=16)}  # 128-bit: fast


def content_digest(parts, algorithm="sha256"):
    """Hex digest (``sha256`` or 16-byte ``blake2b``) of ``parts`` (bytes-like, ``str`` as UTF-8, or a
    ``pathlib.Path``'s content) hashed in order as one stream."""
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
