"""The ``nvdata`` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import json
import sys
from enum import Enum
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
CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Cache folder (default: $NVDATA_CACHE, else ~/.cache/nvdata; shared by every command).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most N rows per source.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when present).")]
RESUME = "interrupted; re-run to resume"


def _run(fn, *args, on_interrupt=RESUME, **kwargs):
    """Call into the library; bad input becomes one clear line on stderr and exit code 2,
    Ctrl-C one line saying what to do and exit code 130 (the shell's convention)."""
    try:
        return fn(*args, **kwargs)
    except NvdataError as e:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(e))}")  # a message's [brackets] are text, not markup
        raise typer.Exit(2)
    except KeyboardInterrupt:
        err.print(f"[yellow]{on_interrupt() if callable(on_interrupt) else on_interrupt}[/]")
        raise typer.Exit(130)


def _fail(message: str) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def _mirror(mirror: Optional[Path], sample: bool) -> Optional[Path]:
    from nvdata.paths import sample_mirror_dir

    if sample and mirror is not None:
        _fail("give either --mirror or --sample, not both")
    if mirror is not None and not mirror.is_dir():
        _fail(f"mirror directory {mirror} does not exist")
    return sample_mirror_dir() if sample else mirror


def _quiet_library_progress() -> None:
    """Silence the libraries' own progress bars (datasets' "Generating train split" per split
    read, transformers' "Loading weights"), which would bury ours; their errors still show.
    Called before those libraries load data, so bars they create later are off too."""
    import datasets
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # huggingface_hub; transformers reads this flag when it loads
    datasets.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _default_cache(cache: Optional[Path]) -> Path:
    from nvdata.paths import default_cache_dir

    return cache or default_cache_dir()


def _train_interrupted(out: Path) -> str:
    from nvdata.train.loop import latest_checkpoint

    ckpt = latest_checkpoint(out) if out.is_dir() else None
    if ckpt is None:
        return "interrupted before the first checkpoint: the steps run so far are lost; re-run to start again"
    # train() checkpoints the last finished step on Ctrl-C: only the unfinished step is redone
    return f"re-run the same command to resume from {ckpt}"


class ListFormat(str, Enum):
    table = "table"
    tsv = "tsv"
    json = "json"


FormatOpt = Annotated[Optional[ListFormat], typer.Option(
    "--format", help="table | tsv | json (default: table on a terminal, tsv when piped).")]


def _print_rows(title: str, columns: list[str], rows: list[list[str]], fmt: Optional[ListFormat]) -> None:
    """Every value in full: a folding table on a terminal, else plain TSV (for grep/cut) or JSON."""
    fmt = fmt or (ListFormat.table if sys.stdout.isatty() else ListFormat.tsv)
    if fmt is ListFormat.json:
        sys.stdout.write(json.dumps([dict(zip(columns, r)) for r in rows], indent=1, ensure_ascii=False) + "\n")
    elif fmt is ListFormat.tsv:
        clean = lambda v: v.replace("\t", " ").replace("\n", " ")  # noqa: E731 - one field per cell
        sys.stdout.write("\t".join(columns) + "\n")
        sys.stdout.writelines("\t".join(clean(v) for v in r) + "\n" for r in rows)
    else:
        t = Table(title=title)
        for col in columns:
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print(t)


@app.command("sources")
def sources_cmd(
    task_type: Annotated[Optional[str], typer.Option("--task-type", help="retrieval|classification|clustering|sts")] = None,
    fmt: FormatOpt = None,
):
    """The source registry, one row per source (never cut: pipe it to grep or cut)."""
    from nvdata.registry import load_registry
    from nvdata.schema import TASK_TYPES

    if task_type is not None and task_type not in TASK_TYPES:
        _fail(f"--task-type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    reg = _run(load_registry)
    rows = [[e.name, e.task_type, e.hf_id, e.config or "", e.split, str(e.paper_samples or ""), e.licence,
             "yes" if e.available else "no"]
            for e in reg.values() if task_type is None or e.task_type == task_type]
    _print_rows("nvdata source registry",
                ["name", "task_type", "hf_id", "config", "split", "paper_samples", "licence", "available"], rows, fmt)


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
    """Fetch sources with datasets.load_dataset into the canonical raw Parquet cache.

    The cache is --cache, else $NVDATA_CACHE, else ~/.cache/nvdata: the one `build` reads.
    Licence-gated sources not in the mirror are skipped with a warning (exit 0); a source that
    fails exits 2 after the others are done.
    """
    from nvdata.registry import get_source, load_registry
    from nvdata.sources import download_source, obtainable

    reg = _run(load_registry)
    if recipe:
        from nvdata.recipe import load_recipe

        rec = _run(load_recipe, recipe)
        reg = rec.registry()  # with the recipe's own (custom) sources
        wanted = [s.name for s in rec.sources]
    else:
        wanted = list(names or reg)
    entries = [_run(get_source, n, reg) for n in wanted]
    mir = _mirror(mirror, sample)
    _quiet_library_progress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        for e in entries:
            if not obtainable(e, mir):  # licence-gated: skipped and said, as `build` does (not a failure)
                err.print(f"[yellow]skipped {e.name}:[/] {e.unavailable_reason}")
                continue
            task = bar.add_task(f"{e.name} ({e.hf_id})", total=limit)
            try:
                r = download_source(e, cache=_default_cache(cache), mirror=mir, limit=limit, force=force,
                                    progress=lambda n, t=task: bar.update(t, completed=n))
            except KeyboardInterrupt:
                err.print("[yellow]interrupted; re-run to resume (finished sources are cached)[/]")
                raise typer.Exit(130)
            except NvdataError as ex:
                bar.update(task, description=f"{e.name}: [red]failed[/]")
                err.print(f"[bold red]error:[/] {ex}")
                failed += 1
                continue
            bar.update(task, total=r.rows, completed=r.rows)
            bar.console.print(f"{e.name}: {r.rows} rows -> {r.path}{' (cached)' if r.cached else ''}")
    if failed:
        raise typer.Exit(2)


@app.command("sample-mirror")
def sample_mirror_cmd(dest: Annotated[Path, typer.Argument(help="Where to copy the bundled sample mirror.")]):
    """Copy the bundled sample mirror out, to show the layout a mirror needs."""
    import shutil

    from nvdata.paths import sample_mirror_dir

    from nvdata.fsutil import check_output_dir

    _run(check_output_dir, dest, "sample-mirror")
    shutil.copytree(sample_mirror_dir(), dest, dirs_exist_ok=True)
    console.print(f"sample mirror copied to {dest}")


@app.command("instructions")
def instructions_cmd(
    name: Annotated[Optional[str], typer.Argument(help="A source or MTEB task name.")] = None,
    fmt: FormatOpt = None,
):
    """Print the task instructions (training sources and MTEB tasks), never cut."""
    from nvdata.instruct import instruction_rows

    rows = _run(instruction_rows, name)
    if name is not None:  # one name: every field in full, readable at any terminal width
        for r in rows:
            for k, v in r.items():
                console.print(f"[bold]{k}:[/] {v if v is not None else ''}", soft_wrap=True)
            console.print()
        return
    cols = ["set", "name", "instruction", "document_instruction", "origin"]
    cell = lambda v: "" if v is None else json.dumps(v) if isinstance(v, bool) else str(v)  # noqa: E731
    _print_rows("instructions", cols, [[cell(r.get(c)) for c in cols] for r in rows], fmt)


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
    _quiet_library_progress()
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
    """Re-check finished shards against the test sets and the manifest checksums.

    With neither --mirror nor --sample, the test sets come from where the build read them (the
    mirror or sample its manifest records; the Hub for a Hub build).
    """
    from nvdata.decontam import audit_build

    _quiet_library_progress()
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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out even if it is a non-empty folder that is not an earlier build.")] = False,
    max_rows_per_source: Annotated[Optional[int], typer.Option("--max-rows-per-source", min=1, help="Cap every source's formatted rows at N (seeded sample; a source's own max_rows still applies).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) | ray (a Ray cluster; needs the ray extra: pip install -e '.\\[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="--engine ray: the cluster to join, HOST:PORT or 'auto' (the one `ray start` runs on this node); default: RAY_ADDRESS if set, else a new local Ray.")] = None,
):
    """Run a recipe end to end: download -> decontaminate -> format -> mine -> write.

    --out may be new, empty or an earlier build; anything else is refused before any work.
    """
    from nvdata.build import run_build
    from nvdata.recipe import load_recipe

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rec = _run(load_recipe, recipe)
    out = out or Path(rec.output.dir)
    _quiet_library_progress()
    columns = (TextColumn("{task.description:>13}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        bars: dict[str, int] = {}  # one bar per stage, started when the stage reports first

        def on_progress(stage: str, done: int, total: int, msg: str) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(stage, total=total)
            bar.update(bars[stage], completed=done, total=total)
            bar.console.print(f"[dim]{stage:>13}[/] {msg}")

        res = _run(run_build, rec, out=out, mirror=_mirror(mirror, False), sample=sample, encoder=encoder,
                   device=device, limit=limit, force=force, cache=_default_cache(cache), overwrite=overwrite,
                   progress=on_progress, max_rows_per_source=max_rows_per_source, engine=engine,
                   ray_address=ray_address)
    _print_build_summary(rec.name, res)


def _print_build_summary(name: str, res) -> None:
    """The per-source counts (nvdata.counts: the numbers the reports, manifest and card show),
    then where the output, the reports and the data card are."""
    from nvdata import counts

    header, body = counts.table(res.manifest["sources"])
    t = Table(title=f"nvdata build: {name}")
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold", no_wrap=i == 0)
    for row in body:
        t.add_row(*row, style="bold" if row[0] == "total" else None)
    for skipped in res.skipped:
        t.add_row(skipped, "skipped", *(["-"] * (len(header) - 2)))
    # A log file or CI page is not a terminal: print the table whole rather than squeezed to 80.
    wide = console if console.is_terminal else Console(file=console.file, width=max(console.width, 160))
    wide.print(t)
    for skipped, why in res.skipped.items():
        console.print(f"[yellow]skipped {skipped}:[/] {why}")
    for line in res.manifest.get("warnings", []):
        console.print(f"[yellow]warning:[/] {line}")
    console.print("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items()))
    out = res.out.resolve()
    reports = res.manifest.get("reports", {})
    console.print(f"[bold green]output:[/] {out} ({res.manifest['total_rows']} rows, "
                  f"{len(res.manifest['shards'])} shard(s))")
    for label, key in (("report (figures)", "html"), ("decontamination", "decontamination"),
                       ("data card", "data_card")):
        if key in reports:
            console.print(f"[bold]{label}:[/] {out / reports[key]}")


@app.command("export")
def export_cmd(
    out_dir: Annotated[Path, typer.Argument(help="A finished build folder.")],
    to: Annotated[Path, typer.Option("--to", help="Destination folder (new, empty or an earlier export).")],
    fmt: Annotated[str, typer.Option("--format", help="sentence-transformers | jsonl")] = "sentence-transformers",
    num_negatives: Annotated[Optional[int], typer.Option("--num-negatives", help="One dataset of rows with >= N negatives, cut to N (default: every row, one dataset per negative count).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --to even if it is a non-empty folder that is not an earlier export.")] = False,
):
    """Export shards to sentence-transformers columns (anchor, positive, negative_1..n) or JSONL."""
    from nvdata.export import export_build

    res = _run(export_build, out_dir, to, fmt=fmt, num_negatives=num_negatives, overwrite=overwrite)
    per = ", ".join(f"{k} {v}" for k, v in res["splits"].items())
    console.print(f"exported {res['rows']} rows, {res['negatives']} negatives -> {to}" + (f" ({per})" if per else ""))
    for source, n in res["left_out"].items():
        console.print(f"[yellow]left out {n} row(s) of {source}:[/] fewer than {num_negatives} negatives")
    if res["negatives_cut"]:
        console.print(f"[yellow]{res['negatives_cut']} negatives beyond the first {num_negatives} of a row not exported[/]")
    console.print("load it with:\n" + res["snippet"], soft_wrap=True, highlight=False, markup=False)


@app.command("train")
def train_cmd(
    recipe: Annotated[str, typer.Option("--recipe", help="stage1 | stage2 | path: its `train:` section")],
    data: Annotated[Path, typer.Option("--data", help="A build folder (shards/).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint + metrics folder.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Model path, Hub id, or 'minilm' (the bundled all-MiniLM-L6-v2). Not needed with --init.")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Continue from this checkpoint (stage 2 from stage 1); it knows its base model.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    token_budget: Annotated[Optional[int], typer.Option("--token-budget", help="Most padded tokens per forward pass (bounds memory; default 4096, raise it on a GPU).")] = None,
    device: DeviceOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into --out even if it is a non-empty folder that is not an earlier training run.")] = False,
):
    """Train an embedding model on the shards (encoder, or decoder + latent attention + LoRA).

    Ctrl-C saves a checkpoint; the same command again resumes from it.
    """
    from nvdata.recipe import load_recipe
    from nvdata.train import TrainConfig, train

    rec = _run(load_recipe, recipe)
    overrides = dict(rec.train)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if token_budget is not None:
        overrides["token_budget"] = token_budget
    cfg = _run(TrainConfig.from_dict, overrides, "train")
    from nvdata.fsutil import removed_on_failure

    with removed_on_failure(out, keep="checkpoints/checkpoint-*"):  # no empty --out after a failure
        summary = _run(train, cfg, data_dir=data, model=model, out=out, init=init, device=device,
                       stage=rec.stage, overwrite=overwrite, on_interrupt=lambda: _train_interrupted(out))
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

    from nvdata.preflight import preflight

    rec = _run(load_recipe, recipe)
    _quiet_library_progress()
    _run(preflight, out, "miner", cache=_default_cache(cache), device=device, encoder=encoder)
    path = _run(finetune_miner_from_recipe, rec, out=out, encoder=encoder, mirror=_mirror(mirror, sample),
                limit=limit, cache=_default_cache(cache), epochs=epochs, batch_size=batch_size, device=device)
    console.print(f"fine-tuned miner saved to {path}; use it with `nvdata build --encoder {path}`")


def main():  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
