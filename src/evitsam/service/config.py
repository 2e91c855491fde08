"""The service's settings, one place for the command line, the environment and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..io import DEFAULT_MAX_PIXELS

MB = 1024 * 1024


@dataclass
class ServiceConfig:
    """What ``evitsam serve`` runs with; every limit protects the server from one kind of request."""

    model: str | None = None  # variant name or checkpoint path; None: the bundled model
    variant: str | None = None  # for checkpoints whose variant cannot be inferred
    runtime: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    cache_mb: float = 512.0  # embeddings (and what the decoder keeps per image) held in memory
    max_upload_mb: float = 50.0  # refused while streaming, before the whole body has arrived
    max_pixels: int = DEFAULT_MAX_PIXELS  # refused from the header, before decoding (decompression bombs)
    workers: int = 2  # threads that run the model (decoder requests of different images run side by side)
    token: str | None = None  # bearer token for every route but health; None: no authentication
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all
    max_prompts: int = 64  # points, and boxes, per request
    max_everything_points: int = 64  # points_per_side limit of /v1/everything
    label_studio_url: str | None = None  # the one host images may be fetched from
    label_studio_token: str | None = None
    local_files_root: Path | None = None  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT, if tasks use local files
    fetch_timeout_s: float = 20.0
    images: Path | None = None  # folder mode of the web app: the folder to annotate
    db: Path | None = None  # its annotations' SQLite file; None: <folder>.evitsam.sqlite beside the folder

    def __post_init__(self) -> None:
        for name in ("cache_mb", "max_upload_mb", "fetch_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("max_pixels", "workers", "max_prompts", "max_everything_points"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty (leave it unset to switch authentication off)")
        if self.label_studio_url:
            if not self.label_studio_url.startswith(("http://", "https://")):
                raise ValueError(f"label_studio_url must start with http:// or https://, got {self.label_studio_url!r}")
            self.label_studio_url = self.label_studio_url.rstrip("/")
        if self.local_files_root is not None:
            root = Path(self.local_files_root).expanduser()
            if not root.is_dir():
                raise ValueError(f"local_files_root must be an existing folder, got {str(root)!r}")
            self.local_files_root = root.resolve()
        if self.images is not None:
            folder = Path(self.images).expanduser()
            if not folder.is_dir():
                raise ValueError(f"images must be an existing folder, got {str(folder)!r}")
            self.images = folder.resolve()
        if self.db is not None:
            if self.images is None:
                raise ValueError("db is where folder mode saves annotations: give images (--images DIR) too")
            self.db = Path(self.db).expanduser().resolve()
            if self.db.is_dir():
                raise ValueError(f"db must be a file path, got the folder {str(self.db)!r}")

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * MB)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)
