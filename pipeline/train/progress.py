"""What a training run shows while it runs: a rich progress bar on a terminal, plain lines otherwise.

On a terminal (stderr is a TTY) every optimizer step moves a bar showing the step, loss, real
tokens/s and the time left. Redirected to a file or a CI log, the bar would be noise, so one
plain line is printed every ``log_every`` steps (and on the first and last step) instead::

    step 20/100 loss 1.2345 lr 1.5e-05 tokens/s 812 padded/real 1.04 elapsed 0:00:31 eta 0:02:04

Messages (resume, interrupt) go to the same stream. Everything goes to stderr: stdout carries
the run's JSON summary.
"""

from __future__ import annotations

import time
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class TrainProgress:
    """Context manager; call :meth:`step` after every optimizer step, :meth:`say` for messages."""

    def __init__(self, *, total: int, initial: int, description: str, log_every: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.total, self.initial, self.log_every = total, initial, max(1, log_every)
        self.description = description
        self._bar: Progress | None = None
        self._task = None
        self._t0 = time.perf_counter()
        self._tokens = 0

    def __enter__(self) -> TrainProgress:
        self._t0 = time.perf_counter()
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tokens_per_s]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.initial,
                                            loss="-", tokens_per_s="-")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    def step(self, record: dict) -> None:
        """``record``: the step's metrics (``step``, ``loss``, ``lr``, ``tokens``, ``padded_tokens``)."""
        step = record["step"]
        self._tokens += record["tokens"]
        elapsed = time.perf_counter() - self._t0
        tokens_per_s = self._tokens / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{record['loss']:.4f}", tokens_per_s=f"{tokens_per_s:,.0f}")
            return
        if step % self.log_every and step != self.initial + 1 and step != self.total:
            return
        done = step - self.initial
        eta = elapsed / done * (self.total - step) if done else 0.0
        ratio = record["padded_tokens"] / max(record["tokens"], 1)
        self.say(
            f"{self.description}: step {step}/{self.total} loss {record['loss']:.4f} lr {record['lr']:.3g} "
            f"tokens/s {tokens_per_s:,.0f} padded/real {ratio:.2f} elapsed {_hms(elapsed)} eta {_hms(eta)}"
        )
