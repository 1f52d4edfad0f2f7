"""Model references, parsed in one place and accepted everywhere a model is named.

A reference is one of:
- a role of the bootstrap build: `teacher`, `repairer`, or `policy` (the teacher, as a policy to train);
- a registered model: `models/<name>[@N]` (that name's latest or N-th model) or a model_id of the
  `models` table;
- a local path (relative paths resolve against the working directory);
- a served model: `http(s)://HOST[:PORT]/v1#SERVED_NAME`, any OpenAI-compatible server. Its tokenizer
  defaults to the served name (a Hub id or a path, as vLLM's own `--tokenizer` defaults to the model);
- for reward models only, a server URL without a name: a `serve-rm` endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tasks.core.errors import ModelReferenceError

if TYPE_CHECKING:
    from schemas.lake import Lake

BOOTSTRAP_FORMAT = 4  # bumped when the bootstrap build changes shape; old builds are not reused
ROLES = {"teacher": "teacher", "policy": "teacher", "repairer": "repairer"}  # role -> bootstrap model
Kind = Literal["role", "registered", "path", "served", "endpoint"]

# Bearer keys for served models: OPENAI_API_KEY for OpenAI-compatible servers (vLLM's --api-key),
# AUTOTRAJ_API_KEY for `autotraj serve-model` / `serve-rm`. Read from the environment, never stored.
API_KEY_ENV = "AUTOTRAJ_API_KEY"
SERVED_KEY_ENVS = ("OPENAI_API_KEY", API_KEY_ENV)
SERVED_BACKENDS = ("openai", "openai-chat")  # /v1/completions with token ids; /v1/chat/completions with messages


def bootstrap_dir(data_dir: str | Path, size: str = "full", seed: int = 0) -> Path:
    """Where a bootstrap build (tokenizer, teacher, repairer) lives in the data directory."""
    return Path(data_dir) / "models" / f"bootstrap-{size}-s{seed}-v{BOOTSTRAP_FORMAT}"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where the model is, how to reach it, and how to name it."""

    reference: str  # as the user wrote it
    kind: Kind
    backend: str = "transformers"  # transformers | vllm for local models, openai | openai-chat for served ones
    path: str | None = None  # a local model directory
    url: str | None = None  # served: the API base (…/v1); endpoint: the server URL
    served_name: str | None = None
    tokenizer: str | None = None  # served: a path or Hub id to load the tokenizer from
    model_id: str | None = None
    version_id: str | None = None  # the `models` version of a registered model

    @property
    def local(self) -> bool:
        """Whether the weights are on this machine (a path to load)."""
        return self.path is not None

    @property
    def label(self) -> str:
        """How results name the model: its model_id, role, served name, or a path's last two parts."""
        if self.kind == "registered":
            return self.model_id or self.reference
        if self.kind == "role":
            return self.reference
        if self.kind == "served":
            return self.served_name or self.reference
        if self.kind == "endpoint":
            return self.url or self.reference
        return "-".join(Path(self.path or self.reference).parts[-2:])

    @property
    def location(self) -> str:
        """Where the model is: its path, or its URL (with the served name)."""
        if self.kind == "served":
            return f"{self.url}#{self.served_name}"
        return self.path or self.url or self.reference

    def identity(self) -> dict[str, Any]:
        """What makes this model this model, for fingerprints: a changed model is another input."""
        if self.kind == "registered":
            return {"registered": self.version_id, "model_id": self.model_id}
        if not self.local:
            return {"served": self.location, "tokenizer": self.tokenizer}
        return {"path": self.path, "files": _directory_signature(Path(self.path or ""))}


def _directory_signature(path: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of a model directory's files: a rebuilt model is a new input."""
    if not path.is_dir():
        return []
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())


def _served(reference: str, tokenizer: str | None, backend: str) -> ModelRef:
    url, _, name = reference.partition("#")
    url = url.rstrip("/")
    if not name:
        raise ModelReferenceError(
            f"model {reference!r}: a served model is named http(s)://HOST[:PORT]/v1#SERVED_NAME (the name is missing)"
        )
    if not url.endswith("/v1"):
        url += "/v1"
    tokenizer = tokenizer or name
    local = Path(tokenizer).expanduser()
    if local.exists():  # a path (relative to the working directory), not a Hub id
        tokenizer = str(local.absolute())
    protocol = "openai-chat" if backend == "openai-chat" else "openai"
    return ModelRef(reference, "served", protocol, url=url, served_name=name, tokenizer=tokenizer)


def _registered(lake: Lake, reference: str) -> ModelRef | None:
    from schemas.lake import LakeError
    from schemas.tables import VERSION_COLUMN

    if reference.startswith("models/"):
        try:
            info = lake.resolve(reference, "models")
        except LakeError as exc:
            raise ModelReferenceError(f"model {reference!r}: {exc}") from None
        row = lake.read(info, columns=["model_id", "path"]).to_pylist()[0]
        return ModelRef(reference, "registered", path=row["path"], model_id=row["model_id"], version_id=info.version_id)
    query = f"SELECT path, {VERSION_COLUMN} FROM models_all WHERE model_id = ? LIMIT 1"
    found = lake.sql(query, [reference]).to_pylist()
    if not found:
        return None
    return ModelRef(
        reference, "registered", path=found[0]["path"], model_id=reference, version_id=found[0][VERSION_COLUMN]
    )


def resolve_model(
    reference: str,
    *,
    data_dir: str | Path,
    lake: Lake | None = None,
    backend: str = "transformers",
    tokenizer: str | None = None,
    allow_endpoint: bool = False,
) -> ModelRef:
    """Resolve a model reference; raise ModelReferenceError naming the reference and what was tried.

    `lake` is where registered models are looked up (None: registered models are not considered).
    `backend` is the configured backend: for local models transformers or vllm; served models use
    `openai` (/v1/completions) unless it is `openai-chat`.
    """
    reference = reference.strip()
    if reference.startswith(("http://", "https://")):
        if "#" not in reference and allow_endpoint:
            return ModelRef(reference, "endpoint", "http", url=reference.rstrip("/"))
        return _served(reference, tokenizer, backend)
    if backend in SERVED_BACKENDS:
        raise ModelReferenceError(
            f"model {reference!r}: backend {backend} needs a served model, http(s)://HOST[:PORT]/v1#SERVED_NAME"
        )
    tried = []
    if reference in ROLES:
        path = bootstrap_dir(data_dir) / ROLES[reference]
        if path.exists():
            return ModelRef(reference, "role", backend, path=str(path))
        raise ModelReferenceError(
            f"model {reference!r} is the bootstrap {ROLES[reference]} at {path}, which does not exist; "
            "run `autotraj bootstrap` (or name a path, a registered model or a served model)"
        )
    if lake is not None:
        registered = _registered(lake, reference)
        if registered is not None:
            if not Path(registered.path or "").exists():
                raise ModelReferenceError(
                    f"model {reference!r} is registered at {registered.path}, which does not exist on this machine"
                )
            return replace(registered, backend=backend)
        tried.append("not a registered model (no model_id of that name in the models table)")
    path = Path(reference).expanduser().absolute()
    if path.exists():
        return ModelRef(reference, "path", backend, path=str(path))
    tried.append(f"not a path ({path} does not exist)")
    roles = ", ".join(ROLES)
    raise ModelReferenceError(f"model {reference!r}: not a role ({roles}), " + ", ".join(tried))
