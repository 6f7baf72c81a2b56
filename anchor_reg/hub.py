"""Publishing an exported model folder to a Hugging Face model repository.

Every file of the folder is uploaded except hidden ones (caches); the
folder itself is never modified. Without ``dry_run`` a token is needed
(argument, ``HF_TOKEN`` or the cached ``huggingface-cli login``).
"""
import pathlib

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import HfHubHTTPError

from anchor_reg.errors import HubError, one_line

DEFAULT_COMMIT_MESSAGE = "Upload anchor-reg speaker embedding model"


def files_to_upload(out_folder):
    """Sorted relative paths of the files in ``out_folder``, hidden ones
    (e.g. caches) left out."""
    out_folder = pathlib.Path(out_folder)
    return sorted(
        path.relative_to(out_folder).as_posix()
        for path in out_folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(out_folder).parts)
    )


def push_to_hub(
    out_folder,
    repo_id,
    *,
    token=None,
    private=False,
    exist_ok=False,
    dry_run=False,
    commit_message=DEFAULT_COMMIT_MESSAGE,
):
    """Uploads an exported folder to a Hugging Face model repository.

    Arguments
    ---------
    out_folder : str or pathlib.Path
        A folder written by :func:`anchor_reg.export.export_model`; never modified.
    repo_id : str
        ``USER/NAME`` of the model repository.
    token : str, optional
        Hub token; default: ``HF_TOKEN`` or the cached ``huggingface-cli login``.
    private : bool
        Create the repository as private.
    exist_ok : bool
        Push a new commit to an existing repository instead of refusing.
    dry_run : bool
        Only return what would be uploaded: no token, no network.
    commit_message : str
        Message of the hub commit.

    Returns
    -------
    list of str
        Relative paths of the uploaded (or, in a dry run, to-upload) files.
    """
    out_folder = pathlib.Path(out_folder)
    if not (out_folder / "hyperparams.yaml").is_file():
        raise HubError(f"nothing to push: {out_folder} has no hyperparams.yaml (not a SpeechBrain model folder)")
    files = files_to_upload(out_folder)
    if dry_run:
        return files
    token = token or get_token()
    if not token:
        raise HubError(
            f"no Hugging Face token to push {repo_id}: pass --token, set HF_TOKEN "
            "or run `huggingface-cli login`"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=exist_ok, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(out_folder),
            repo_type="model",
            allow_patterns=files,
            commit_message=commit_message,
        )
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 409:
            raise HubError(
                f"Hugging Face repo {repo_id} already exists; pass --exist-ok "
                "(exist_ok=True) to push a new commit to it"
            ) from err
        raise HubError(
            f"pushing to Hugging Face repo {repo_id} failed: {one_line(err)}"
        ) from err
    except Exception as err:  # network / client errors vary with the hub client
        raise HubError(
            f"cannot reach the Hugging Face hub to push {repo_id}: "
            f"{type(err).__name__}: {one_line(err)}"
        ) from err
    return files
