"""The `kana` command: every pipeline stage, for use without `mlflow run`.

A command's help is its function's docstring up to the list under "Parameters:", and each
option's help is its line in that list: Python's `help()` and `kana <command> --help` read the
same words, written once.
"""

from __future__ import annotations

import functools
import inspect
import re

import typer

from kana.dataset import preprocess
from kana.drawing import serve_page
from kana.pipeline import main
from kana.registry import register
from kana.training import train_cnn, train_lstm, train_transfer

PARAMETERS_HEADING = "\nParameters:\n"
# "- `name`: text", the text running on over indented lines, up to the next item
_PARAMETER_ITEM = re.compile(r"^- `(\w+)`: (.+?)(?=^- `|\Z)", re.M | re.S)


def documented_parameters(fn) -> tuple[str, dict[str, str]]:
    """A function's docstring as its prose (before "Parameters:") and the line of each parameter
    in the list after it (`name`: text), by name, on one line each."""
    prose, _, listing = inspect.getdoc(fn).partition(PARAMETERS_HEADING)
    lines: dict[str, str] = {}
    for name, text in _PARAMETER_ITEM.findall(listing):
        if name in lines:
            raise ValueError(f"{fn.__name__}'s docstring lists parameter {name!r} twice")
        lines[name] = " ".join(text.split())
    return prose.strip(), lines


def command(fn):
    """`fn` as a Typer command: its docstring's prose as the command's help, each parameter's line
    as its option's help. `fn` itself stays as it is for Python callers."""
    prose, lines = documented_parameters(fn)
    signature = inspect.signature(fn, eval_str=True)

    @functools.wraps(fn)
    def run(**options):
        return fn(**options)

    run.__doc__ = prose
    run.__signature__ = signature.replace(parameters=[
        p.replace(default=typer.Option(p.default, help=lines.get(p.name)))
        for p in signature.parameters.values()
    ])
    return run


def run_alone(fn) -> None:
    """Run `fn` as a program of its own (an MLflow entry point's command line), its help as
    `kana`'s shows it."""
    alone = typer.Typer(add_completion=False, rich_markup_mode="markdown")
    alone.command()(command(fn))
    alone()


# markdown: docstrings reflow to the terminal's width, and [brackets] in them stay text
app = typer.Typer(help="kana: handwritten hiragana from raw pen strokes, tracked with MLflow.",
                  no_args_is_help=True, rich_markup_mode="markdown")
app.command("preprocess")(command(preprocess))
app.command("train-cnn")(command(train_cnn))
app.command("train-transfer")(command(train_transfer))
app.command("train-lstm")(command(train_lstm))
app.command("register")(command(register))
app.command("main")(command(main))
app.command("serve-page")(command(serve_page))

if __name__ == "__main__":
    app()
