"""`pocketdiff data`: prepare training data.

    pocketdiff data cache-latents --model SD15_V --data SHARDS --n 100000 --out CACHE [--resolution 512]
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pocketdiff.validation import check_int, check_output_dir, check_output_file

app = typer.Typer(help="Prepare training data (a latent cache).", no_args_is_help=True)


@app.command("cache-latents")
def cache_latents(
    model: Path = typer.Option(..., "--model", help="the model directory whose vae/ encodes (the teacher's)"),
    data: str = typer.Option(..., "--data", help="image folder, webdataset shards (DIR or PATTERN.tar), parquet"),
    out: Path = typer.Option(..., "--out", help="the cache directory (then: --set options.data=OUT)"),
    n: int = typer.Option(None, "--n", help="examples to cache [default: all; required for webdataset shards]"),
    resolution: int = typer.Option(None, "--resolution", help="image size [default: the VAE's, 512 for SD-1.5]"),
    shard_size: int = typer.Option(1000, "--shard-size", help="latents per safetensors shard"),
    batch_size: int = typer.Option(16, "--batch-size", help="images per VAE call"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    json_path: Path = typer.Option(None, "--json", help="write the cache's index (n, skipped, ...) as JSON"),
) -> None:
    """Encode a data set once with the VAE; training stages then read latents (`--set options.data=OUT`)."""
    import torch

    from pocketdiff.data.batches import open_dataset
    from pocketdiff.data.latent_cache import build_latent_cache
    from pocketdiff.io import write_json_atomic
    from pocketdiff.models import load_vae

    for name, value in (("--n", n), ("--resolution", resolution), ("--shard-size", shard_size),
                        ("--batch-size", batch_size)):
        check_int(name, value, 1)
    check_output_dir("--out", out)
    check_output_file("--json", json_path, (".json",))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    vae = load_vae(Path(model) / "vae").to(dev)
    size = resolution or vae.config.sample_size
    index = build_latent_cache(open_dataset(data, size), vae, out, n=n, shard_size=shard_size, batch_size=batch_size,
                               resolution=size, vae_name=str(Path(model) / "vae"))
    typer.echo(f"cached {index['n']} latents ({index['skipped']} bad examples skipped) in {len(index['shards'])} "
               f"shard(s) at {out}")
    if json_path is not None:
        write_json_atomic(json_path, index)
