"""The `kana` command: every pipeline stage, for use without `mlflow run`."""

from __future__ import annotations

import typer

from kana.dataset import preprocess
from kana.drawing import serve_page
from kana.pipeline import main
from kana.registry import register
from kana.training import train_cnn, train_lstm, train_transfer

# markdown: docstrings reflow to the terminal's width, and [brackets] in them stay text
app = typer.Typer(help="kana: handwritten hiragana from raw pen strokes, tracked with MLflow.",
                  no_args_is_help=True, rich_markup_mode="markdown")
app.command("preprocess")(preprocess)
app.command("train-cnn")(train_cnn)
app.command("train-transfer")(train_transfer)
app.command("train-lstm")(train_lstm)
app.command("register")(register)
app.command("main")(main)
app.command("serve-page")(serve_page)

if __name__ == "__main__":
    app()
