"""Content digests: one hex string that changes whenever the hashed content does."""
import hashlib
import pathlib

ALGORITHMS = {"sha256": hashlib.sha256, "blake2b": lambda: hashlib.blake2b(digest_size=16)}  # 128-bit: fast


def content_digest(parts, algorithm="sha256"):
    """Hex digest (``sha256`` or 16-byte ``blake2b``) of ``parts`` hashed in order as one stream.

    A part is bytes-like (a contiguous numpy array too), ``str`` (hashed as UTF-8) or ``pathlib.Path``
    (the file's content, read in 1 MiB blocks).
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
