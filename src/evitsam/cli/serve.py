"""``evitsam serve``: the HTTP service (evitsam.service); FastAPI and uvicorn are imported only when it runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .common import add_command

SERVE_EXTRA = "pip install 'evitsam[serve]'"


def serve(
    model: Annotated[
        str | None, typer.Option(metavar="NAME", help="Variant name (l0 ... xl1); default: the bundled model.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(metavar="PATH", help="Checkpoint file (.pt or .safetensors) instead of --model.")
    ] = None,
    variant: Annotated[
        str | None, typer.Option(metavar="NAME", help="Variant of --checkpoint, when it cannot be inferred.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    runtime: Annotated[str, typer.Option(metavar="NAME", help="Engine: torch, onnxruntime or openvino.")] = "torch",
    precision: Annotated[str, typer.Option(metavar="P", help="fp32, bf16, fp16 (CUDA) or int8 (openvino).")] = "fp32",
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    cache_mb: Annotated[float, typer.Option(metavar="MB", help="Memory for cached image embeddings.")] = 512.0,
    max_upload_mb: Annotated[float, typer.Option(metavar="MB", help="Largest upload accepted.")] = 50.0,
    max_pixels: Annotated[
        int, typer.Option(metavar="N", help="Largest image, in pixels (refused before decoding).")
    ] = 100_000_000,
    workers: Annotated[int, typer.Option(metavar="N", help="Requests the model runs at once.")] = 2,
    threads: Annotated[
        int | None, typer.Option(metavar="N", help="Torch threads per request; default: CPU cores / workers.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(metavar="TOKEN", envvar="EVITSAM_TOKEN", help="Require 'Authorization: Bearer TOKEN'."),
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(metavar="ORIGIN", help="Allow browser calls from this origin (repeatable).")
    ] = None,
    label_studio_url: Annotated[
        str | None,
        typer.Option(metavar="URL", envvar="LABEL_STUDIO_URL", help="The Label Studio host task images come from."),
    ] = None,
    label_studio_token: Annotated[
        str | None, typer.Option(metavar="TOKEN", envvar="LABEL_STUDIO_API_KEY", help="Its API token.")
    ] = None,
    local_files_root: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
            help="Label Studio's local-files root, for tasks that use local files.",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Web app folder mode: annotate the images of this folder (saved as accepted)."
        ),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Folder mode's SQLite file; default: <DIR>.evitsam.sqlite beside DIR."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level (info logs every request).")] = "warning",
) -> None:
    """Serve the model over HTTP: an annotation web app (/), a REST API (/v1, /docs), a Label Studio ML backend."""
    try:
        import torch
        import uvicorn

        from ..service.app import create_app
        from ..service.config import ServiceConfig
        from ..service.state import Service
    except ImportError as error:
        raise ValueError(f"evitsam serve needs the serve extra ({SERVE_EXTRA}): {error}") from None
    if model is not None and checkpoint is not None:
        raise ValueError("give either --model or --checkpoint, not both")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    config = ServiceConfig(
        model=str(checkpoint) if checkpoint is not None else model,
        variant=variant,
        runtime=runtime,
        precision=precision,
        device=device,
        cache_mb=cache_mb,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        workers=workers,
        token=token,
        cors_origins=list(cors_origin or []),
        label_studio_url=label_studio_url,
        label_studio_token=label_studio_token,
        local_files_root=local_files_root,
        images=images,
        db=db,
    )
    # each request's torch ops run on their share of the cores, so concurrent requests do not oversubscribe them
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))
    service = Service.load(config)
    service.warm_up()
    from ..service.web_graph import web_decoder

    web_decoder(service.model)  # the web app's decoder, exported once per set of weights (cached)
    info = service.info()
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    typer.echo(
        f"evitsam serve: model {info['model']} ({info['variant']}, {info['encoder_size']} px, {info['runtime']} "
        f"{info['precision']}) at http://{shown}:{port}  (web app: /, API docs: /docs; Ctrl-C stops)",
        err=True,
    )
    if config.images is not None:
        from ..service.webapp import default_db, folder_images

        typer.echo(
            f"evitsam serve: folder mode, {len(folder_images(config.images))} images in {config.images}; "
            f"accepted objects saved to {config.db or default_db(config.images)}",
            err=True,
        )
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level))
    try:
        server.run()  # uvicorn shuts down on Ctrl-C, then raises it again as KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        service.pool.shutdown(wait=False, cancel_futures=True)
    typer.echo("evitsam serve: stopped", err=True)


def register(app: typer.Typer) -> None:
    add_command(app, serve)
