"""Publishing an exported model folder (every file but hidden ones) to a Hugging Face model repository."""
import pathlib

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import HfHubHTTPError

from anchor_reg.errors import HubError, one_line


def push_to_hub(out_folder, repo_id, *, token=None, private=False, exist_ok=False, dry_run=False):
    """Uploads an exported folder to ``repo_id`` (``USER/NAME``; ``dry_run``: no token or network needed);
    returns the (to-be-)uploaded relative paths; HubError for no token, an existing repository or a failed push."""
    out_folder = pathlib.Path(out_folder)
    if not (out_folder / "hyperparams.yaml").is_file():
        raise HubError(f"nothing to push: {out_folder} has no hyperparams.yaml (not a SpeechBrain model folder)")
    relative = (path.relative_to(out_folder) for path in out_folder.rglob("*") if path.is_file())
    files = sorted(path.as_posix() for path in relative if not any(part.startswith(".") for part in path.parts))
    if dry_run:
        return files
    token = token or get_token()
    if not token:
        raise HubError(f"no Hugging Face token to push {repo_id}: pass --token, set HF_TOKEN "
                       "or run `huggingface-cli login`")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=exist_ok, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(out_folder), repo_type="model", allow_patterns=files,
                          commit_message="Upload anchor-reg speaker embedding model")
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 409:
            raise HubError(f"Hugging Face repo {repo_id} already exists; pass --exist-ok "
                           "(exist_ok=True) to push a new commit to it") from err
        raise HubError(f"pushing to Hugging Face repo {repo_id} failed: {one_line(err)}") from err
    except Exception as err:  # network / client errors vary with the hub client
        raise HubError(f"cannot reach the Hugging Face hub to push {repo_id}: "
                       f"{type(err).__name__}: {one_line(err)}") from err
    return files
