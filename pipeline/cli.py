"""The ``nvdata`` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from nvdata.errors import NvdataError

app = typer.Typer(
    name="nvdata",
    help="NV-Embed-style embedding training data: download, instruct, decontaminate, mine, shard, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)

MirrorOpt = Annotated[Optional[Path], typer.Option("--mirror", help="Local Hub-layout mirror: DIR/<org>/<name>/.")]
SampleOpt = Annotated[bool, typer.Option("--sample", help="Use the bundled sample mirror.")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Stage cache folder.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most N rows per source.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when present).")]


def _run(fn, *args, **kwargs):
    """Call into the library; bad input becomes one clear line on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except NvdataError as e:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(e))}")  # a message's [brackets] are text, not markup
        raise typer.Exit(2)


def _mirror(mirror: Optional[Path], sample: bool) -> Optional[Path]:
    from nvdata.paths import sample_mirror_dir

    if sample and mirror is not None:
        err.print("[bold red]error:[/] give either --mirror or --sample, not both")
        raise typer.Exit(2)
    return sample_mirror_dir() if sample else mirror


def _default_cache(cache: Optional[Path]) -> Path:
    return cache or Path(os.environ.get("NVDATA_CACHE", ".nvdata-cache"))


@app.command("sources")
def sources_cmd(
    task_type: Annotated[Optional[str], typer.Option("--task-type", help="retrieval|classification|clustering|sts")] = None,
):
    """Table of the source registry."""
    from nvdata.registry import load_registry

    reg = _run(load_registry)
    t = Table(title="nvdata source registry")
    for col in ("name", "task type", "Hub id", "config", "split", "paper samples", "licence", "available"):
        t.add_column(col)
    for e in reg.values():
        if task_type and e.task_type != task_type:
            continue
        t.add_row(e.name, e.task_type, e.hf_id, e.config or "", e.split,
                  str(e.paper_samples or ""), e.licence, "yes" if e.available else "[red]no[/]")
    console.print(t)


@app.command("download")
def download_cmd(
    names: Annotated[Optional[list[str]], typer.Argument(help="Registry names (default: all, or the recipe's).")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Download the recipe's sources.")] = None,
    mirror: MirrorOpt = None,
    sample: SampleOpt = False,
    limit: LimitOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
):
    """Fetch sources with datasets.load_dataset into the canonical raw Parquet cache."""
    from nvdata.registry import get_source, load_registry
    from nvdata.sources import download_source, obtainable

    reg = _run(load_registry)
    if recipe:
        from nvdata.recipe import load_recipe

        wanted = [s.name for s in _run(load_recipe, recipe).sources]
    else:
        wanted = list(names or reg)
    entries = [_run(get_source, n, reg) for n in wanted]
    mir = _mirror(mirror, sample)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        for e in entries:
            if not obtainable(e, mir):
                err.print(f"[yellow]{e.name}: not downloadable:[/] {e.unavailable_reason}")
                failed += 1
                continue
            task = bar.add_task(f"{e.name} ({e.hf_id})", total=limit)
            try:
                r = download_source(e, cache=_default_cache(cache), mirror=mir, limit=limit, force=force,
                                    progress=lambda n, t=task: bar.update(t, completed=n))
            except NvdataError as ex:
                bar.update(task, description=f"{e.name}: [red]failed[/]")
                err.print(f"[bold red]error:[/] {ex}")
                failed += 1
                continue
            bar.update(task, total=r.rows, completed=r.rows)
            bar.console.print(f"{e.name}: {r.rows} rows -> {r.path}{' (cached)' if r.cached else ''}")
    if failed:
        raise typer.Exit(1)


@app.command("sample-mirror")
def sample_mirror_cmd(dest: Annotated[Path, typer.Argument(help="Where to copy the bundled sample mirror.")]):
    """Copy the bundled sample mirror out, to show the layout a mirror needs."""
    import shutil

    from nvdata.paths import sample_mirror_dir

    if dest.exists() and any(dest.iterdir()):
        err.print(f"[bold red]error:[/] {dest} exists and is not empty")
        raise typer.Exit(2)
    shutil.copytree(sample_mirror_dir(), dest, dirs_exist_ok=True)
    console.print(f"sample mirror copied to {dest}")


@app.command("instructions")
def instructions_cmd(name: Annotated[Optional[str], typer.Argument(help="A source or MTEB task name.")] = None):
    """Print the task instructions (training sources and MTEB tasks)."""
    from nvdata.instruct import instruction_rows

    rows = _run(instruction_rows, name)
    if name is not None:  # one name: every field in full, readable at any terminal width
        for r in rows:
            for k, v in r.items():
                console.print(f"[bold]{k}:[/] {v if v is not None else ''}", soft_wrap=True)
            console.print()
        return
    t = Table(title="instructions")
    for col in ("set", "name", "instruction", "document_instruction", "origin"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*[str(r.get(c)) if r.get(c) is not None else "" for c in
                    ("set", "name", "instruction", "document_instruction", "origin")])
    console.print(t)


@app.command("decontaminate")
def decontaminate_cmd(
    names: Annotated[Optional[list[str]], typer.Argument(help="Sources (default: the recipe's).")] = None,
    recipe: Annotated[str, typer.Option("--recipe")] = "stage2",
    mirror: MirrorOpt = None,
    sample: SampleOpt = False,
    limit: LimitOpt = None,
    cache: CacheOpt = None,
    report: Annotated[Path, typer.Option("--report", help="Folder for decontamination.json/.md")] = Path("reports"),
):
    """Check downloaded sources against the MTEB test sets and write the report."""
    from nvdata.build import run_decontaminate_sources
    from nvdata.recipe import load_recipe

    rec = _run(load_recipe, recipe)
    summary = _run(run_decontaminate_sources, rec, names=names, mirror=_mirror(mirror, sample),
                   limit=limit, cache=_default_cache(cache), report_dir=report)
    console.print_json(json.dumps(summary, default=str))


@app.command("audit")
def audit_cmd(
    out_dir: Annotated[Path, typer.Argument(help="A finished build folder.")],
    mirror: MirrorOpt = None,
    sample: SampleOpt = False,
    cache: CacheOpt = None,
):
    """Re-check finished shards against the test sets and the manifest checksums."""
    from nvdata.decontam import audit_build

    result = _run(audit_build, out_dir, mirror=_mirror(mirror, sample), cache_dir=_default_cache(cache) / "test-index")
    console.print_json(json.dumps(result, default=str))
    if not result.get("ok"):
        err.print("[bold red]audit failed[/]")
        raise typer.Exit(1)
    console.print("[green]audit passed[/]")


@app.command("build")
def build_cmd(
    recipe: Annotated[str, typer.Option("--recipe", help="stage1 | stage2 | stage2-v2 | path/to/recipe.yaml")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: the recipe's).")] = None,
    mirror: MirrorOpt = None,
    sample: SampleOpt = False,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Dense miner: sentence-transformers path or Hub id (overrides the recipe's mining.dense.encoder).")] = None,
    device: DeviceOpt = None,
    limit: LimitOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Ignore every cached stage.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) | ray (a Ray cluster; needs nvdata[ray]).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="--engine ray: the cluster to join ('auto': the one `ray start` runs on this node); default: start a local Ray.")] = None,
):
    """Run a recipe end to end: download -> decontaminate -> format -> mine -> write."""
    from nvdata.build import run_build
    from nvdata.recipe import load_recipe

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rec = _run(load_recipe, recipe)
    out = out or Path(rec.output.dir)
    columns = (TextColumn("{task.description:>13}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        bars: dict[str, int] = {}  # one bar per stage, started when the stage reports first

        def on_progress(stage: str, done: int, total: int, msg: str) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(stage, total=total)
            bar.update(bars[stage], completed=done, total=total)
            bar.console.print(f"[dim]{stage:>13}[/] {msg}")

        res = _run(run_build, rec, out=out, mirror=mirror, sample=sample, encoder=encoder, device=device,
                   limit=limit, force=force, cache=cache, progress=on_progress, engine=engine,
                   ray_address=ray_address)
    t = Table(title=f"nvdata build: {rec.name}")
    for col in ("source", "task type", "raw rows", "dropped (decontam)", "rows out", "negatives/row"):
        t.add_column(col, justify="right" if col not in ("source", "task type") else "left")
    for r in res.sources:
        t.add_row(r.name, r.task_type, str(r.raw_rows), str(r.decontam_dropped), str(r.rows),
                  f"{r.mean_negatives:.2f}")
    for name in res.skipped:
        t.add_row(name, "-", "-", "-", "skipped", "-")
    console.print(t)
    for name, why in res.skipped.items():
        console.print(f"[yellow]skipped {name}:[/] {why}")
    console.print("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items()))
    console.print(f"[bold green]output:[/] {res.out.resolve()} ({res.manifest['total_rows']} rows, "
                  f"{len(res.manifest['shards'])} shard(s))")


@app.command("export")
def export_cmd(
    out_dir: Annotated[Path, typer.Argument(help="A finished build folder.")],
    to: Annotated[Path, typer.Option("--to", help="Destination folder.")],
    fmt: Annotated[str, typer.Option("--format", help="sentence-transformers | jsonl")] = "sentence-transformers",
    num_negatives: Annotated[Optional[int], typer.Option("--num-negatives", help="negative_1..N columns (default: the most every row has).")] = None,
):
    """Export shards to sentence-transformers columns (anchor, positive, negative_1..n) or JSONL."""
    from nvdata.export import export_build

    res = _run(export_build, out_dir, to, fmt=fmt, num_negatives=num_negatives)
    console.print(f"exported {res['rows']} rows ({res['dropped']} without enough negatives) -> {to}")


@app.command("train")
def train_cmd(
    recipe: Annotated[str, typer.Option("--recipe", help="stage1 | stage2 | path: its `train:` section")],
    data: Annotated[Path, typer.Option("--data", help="A build folder (shards/).")],
    model: Annotated[str, typer.Option("--model", help="Model path or Hub id.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint + metrics folder.")],
    init: Annotated[Optional[Path], typer.Option("--init", help="Continue from this checkpoint (stage 2 from stage 1).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    device: DeviceOpt = None,
):
    """Train an embedding model on the shards (encoder, or decoder + latent attention + LoRA)."""
    from nvdata.recipe import load_recipe
    from nvdata.train import TrainConfig, train

    rec = _run(load_recipe, recipe)
    overrides = dict(rec.train)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    cfg = _run(TrainConfig.from_dict, overrides, "train")
    summary = _run(train, cfg, data_dir=data, model=model, out=out, init=init, device=device, stage=rec.stage)
    console.print_json(json.dumps(summary, default=str))


@app.command("finetune-miner")
def finetune_miner_cmd(
    recipe: Annotated[str, typer.Option("--recipe", help="Its retrieval sources are the training pairs.")] = "stage1",
    out: Annotated[Path, typer.Option("--out", help="Where to save the fine-tuned encoder.")] = Path("miner"),
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Start from this encoder (default: the recipe's mining.dense.encoder, else the bundled MiniLM).")] = None,
    mirror: MirrorOpt = None,
    sample: SampleOpt = False,
    limit: LimitOpt = None,
    cache: CacheOpt = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: DeviceOpt = None,
):
    """Fine-tune the dense miner's encoder on the recipe's retrieval pairs (in-batch negatives)."""
    from nvdata.build import finetune_miner_from_recipe
    from nvdata.recipe import load_recipe

    rec = _run(load_recipe, recipe)
    path = _run(finetune_miner_from_recipe, rec, out=out, encoder=encoder, mirror=_mirror(mirror, sample),
                limit=limit, cache=_default_cache(cache), epochs=epochs, batch_size=batch_size, device=device)
    console.print(f"fine-tuned miner saved to {path}; use it with `nvdata build --encoder {path}`")


def main():  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
