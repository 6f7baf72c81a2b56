"""Where a base model's SpeechBrain folder is cached, and the fingerprint of such a folder."""
import pathlib
import re

from anchor_reg.digest import content_digest


def savedir_of(source, pretrained_folder):
    """SpeechBrain's savedir for a base: ``<pretrained_folder>/<source, slashes as _>``."""
    source = str(pathlib.Path(source).resolve()) if pathlib.Path(str(source)).is_dir() else str(source)
    return pathlib.Path(pretrained_folder) / re.sub(r"[^\w.-]+", "_", source.strip("/"))


def folder_fingerprint(folder):
    """sha256 over the names and content of a model folder's hyperparams.yaml and ``*.ckpt`` files."""
    folder = pathlib.Path(folder)
    paths = sorted([folder / "hyperparams.yaml", *folder.glob("*.ckpt")])
    return content_digest(part for path in paths for part in (path.name, path))
