"""The `main` entry point: preprocess -> train_cnn, train_transfer, train_lstm -> register.

MLflow's multistep-workflow pattern: each step is `mlflow.run` of this project's own entry point,
and a FINISHED run of that entry point with the same parameters, the same git commit and the same
kana code (`kana.tracking.code_digest`, which sees edits not yet committed) is reused instead of
run again (so a rerun of `main` after a crash picks up where it stopped). MLflow Projects runs
each step in the project folder, whatever folder `main` was started from (`kana main`).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kana.features import MAX_GAP
from kana.tracking import (CODE_DIGEST_TAG, code_digest, experiment_ids, git_commit, kana_run,
                           log_params, logged_spellings, scratch_dir)

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _already_ran(entry_point: str, parameters: dict, commit: str | None):
    """A FINISHED run of `entry_point` in this experiment with these params, commit and kana code,
    or None. The commit alone misses edits not yet committed: a changed synthesizer would have
    reused the old data and models."""
    client = MlflowClient()
    runs = client.search_runs(
        experiment_ids(),
        filter_string=f"tags.`mlflow.project.entryPoint` = '{entry_point}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    # MLflow Projects logs each value as it put it on the command line, shell-quoted ('' for "",
    # a folder with a space in quotes): compared as given, a step run with real_dir "" (main's
    # default) never matched, and every rerun of `main` trained all three families again
    wanted = {k: logged_spellings(v) for k, v in parameters.items()}
    code = code_digest()
    for run in runs:
        if commit and run.data.tags.get("mlflow.source.git.commit") != commit:
            continue
        if run.data.tags.get(CODE_DIGEST_TAG) != code:
            continue
        if all(run.data.params.get(k) in v for k, v in wanted.items()):
            return run
    return None


def folder_for_steps(folder: str) -> str:
    """`folder` as the steps must be given it. They run in the project folder, so a folder named
    relative to another working folder (`kana main` started elsewhere) goes to them as an absolute
    path, and an absent one (only the default raw_dir may be: `check_raw_dir`) as '' (synthetic
    samples alone); else the steps would read another folder, or the project's own data/raw, unsaid."""
    if not folder or Path(folder).is_absolute() or Path.cwd().resolve() == PROJECT_DIR:
        return folder
    return os.path.abspath(folder) if os.path.lexists(folder) else ""


def _get_or_run(entry_point: str, parameters: dict, commit: str | None, reuse: bool):
    if reuse:
        found = _already_ran(entry_point, parameters, commit)
        if found is not None:
            print(f"reusing {entry_point} run {found.info.run_id} (same params, commit and kana code)")
            return found
    print(f"running {entry_point} with {parameters}")
    experiment_id = mlflow.active_run().info.experiment_id
    with scratch_dir() as storage:  # else MLflow Projects leaves an empty temp folder per step
        submitted = mlflow.run(
            str(PROJECT_DIR), entry_point, parameters=parameters, env_manager="local",
            experiment_id=experiment_id, storage_dir=str(storage),
        )
    return MlflowClient().get_run(submitted.run_id)


def main(
    raw_dir: str = "data/raw",
    real_dir: str = "",
    class_set: str = "all",
    synthetic_per_class: int = 480,
    max_gap: float = MAX_GAP,
    cnn_epochs: int = 12,
    cnn_raster_size: int = 32,
    transfer_epochs: int = 8,
    lstm_epochs: int = 12,
    kanji_classes: int = 150,
    kanji_per_class: int = 40,
    base_epochs: int = 12,
    model_name: str = "kana-classifier",
    seed: int = 127,
    reuse: bool = True,
) -> list[dict]:
    """Run the whole pipeline and print a table of the families and the champion.

    Parameters:

    - `raw_dir`: `preprocess`'s: the folder of raw drawings, one subfolder per source; one that
      does not exist gives synthetic samples alone.
    - `real_dir`: a folder of real raw drawings, laid out as `raw_dir`, that every trained model is
      scored on (the `real_*` metrics; "": none).
    - `class_set`: `preprocess`'s: "basic46", "extended" or "all".
    - `synthetic_per_class`: `preprocess`'s: samples of each class synthesized from KanjiVG.
    - `max_gap`: `preprocess`'s: straight runs longer than this share of the character's size get
      points along them before the spline (0: none).
    - `cnn_epochs`: `train_cnn`'s epochs.
    - `cnn_raster_size`: `train_cnn`'s raster_size (48 reads small voicing marks better and serves
      slower; see docs/experiments.md, "Rasters of 48 pixels").
    - `transfer_epochs`: `train_transfer`'s epochs.
    - `lstm_epochs`: `train_lstm`'s epochs.
    - `kanji_classes`: `train_transfer`'s: how many kanji its base learns.
    - `kanji_per_class`: `train_transfer`'s: synthetic samples of each kanji for its base.
    - `base_epochs`: `train_transfer`'s: the most epochs to train its base.
    - `model_name`: `register`'s: the registered model whose `champion` alias goes to the winner.
    - `seed`: every step's: seeds the synthesis, the split and the training.
    - `reuse`: reuse a FINISHED step run with the same parameters, git commit and kana code
      instead of running it again (`register` always runs).
    """
    from kana import classes
    from kana.dataset import check_dataset_params, check_raw_dir
    from kana.strokes import check_raw_folder
    from kana.training import check_at_least, check_raster_size

    # before any step runs: a typo found after preprocess would waste its minutes
    check_raster_size(cnn_raster_size, "cnn_raster_size")
    classes.class_set(class_set)  # an unknown name
    check_dataset_params(synthetic_per_class, seed, max_gap)  # main leaves the rest at their defaults
    check_at_least(1, cnn_epochs=cnn_epochs, transfer_epochs=transfer_epochs, lstm_epochs=lstm_epochs,
                   kanji_classes=kanji_classes, kanji_per_class=kanji_per_class, base_epochs=base_epochs)
    check_raw_dir(raw_dir)
    check_raw_folder("real_dir", real_dir)
    given_raw_dir, raw_dir, real_dir = raw_dir, folder_for_steps(raw_dir), folder_for_steps(real_dir)
    if given_raw_dir and not raw_dir:
        print(f"raw_dir {given_raw_dir!r} does not exist (looked from {Path.cwd()}): "
              "using synthetic samples only")
    commit = git_commit(PROJECT_DIR)
    with kana_run("main", run_name=f"main-{class_set}"):
        log_params({
            "class_set": class_set, "synthetic_per_class": synthetic_per_class,
            "raw_dir": raw_dir, "real_dir": real_dir, "seed": seed, "model_name": model_name,
            "max_gap": max_gap,
        })
        prep = _get_or_run("preprocess", {
            "raw_dir": raw_dir, "class_set": class_set,
            "synthetic_per_class": synthetic_per_class, "seed": seed, "max_gap": max_gap,
        }, commit, reuse)
        dataset_run_id = prep.info.run_id
        common = {"dataset_run_id": dataset_run_id, "seed": seed, "real_dir": real_dir}
        runs = {
            "cnn": _get_or_run("train_cnn", {**common, "epochs": cnn_epochs,
                                             "raster_size": cnn_raster_size}, commit, reuse),
            "transfer": _get_or_run("train_transfer", {
                **common, "epochs": transfer_epochs, "kanji_classes": kanji_classes,
                "kanji_per_class": kanji_per_class, "base_epochs": base_epochs,
            }, commit, reuse),
            "lstm": _get_or_run("train_lstm", {**common, "epochs": lstm_epochs}, commit, reuse),
        }
        # Registering is cheap and must see every candidate, so it always runs.
        registered = _get_or_run("register", {"dataset_run_id": dataset_run_id,
                                              "model_name": model_name}, commit, reuse=False)
        from kana.registry import current_champion

        champion = current_champion(model_name)
        rows = summary_rows(runs, registered, champion)
        table = format_table(rows)
        print(table)
        mlflow.log_text(table, "summary.txt")
        if champion is not None:
            mlflow.set_tags({"champion_version": champion.version,
                             "champion_family": champion.tags.get("model_family", "")})
        return rows


def summary_rows(runs: dict, registered, champion) -> list[dict]:
    """The summary's rows: each family's run of this `main`; the ensemble `register` scored, which
    is of the best run of each family on this dataset (runs of an earlier `main` with other
    epochs among them, where they scored better: then its run_id cell names them, not "the
    above"); and the champion, where it is none of those (better runs on this data, kept), as a
    row of its own. Exactly one row says "yes" where there is a champion."""
    from kana.registry import ENSEMBLE, ENSEMBLE_RUNS_TAG

    champion_runs = set(champion.tags.get("source_run_id", "").split(",")) if champion else set()

    def is_champion(run_ids: str) -> bool:
        return set(run_ids.split(",")) == champion_runs

    rows = [_row(family, run.data.metrics, run.info.run_id, is_champion(run.info.run_id))
            for family, run in runs.items()]
    ensemble = {k.removeprefix("ensemble_"): v for k, v in registered.data.metrics.items()
                if k.startswith("ensemble_")}
    if ensemble:
        members = registered.data.tags[ENSEMBLE_RUNS_TAG]
        above = set(members.split(",")) == {r.info.run_id for r in runs.values()}
        rows.append(_row(ENSEMBLE, ensemble, "(geometric mean of the above)" if above else members,
                         is_champion(members)))
    if champion is not None and not any(row["champion"] for row in rows):
        rows.append(_champion_row(champion))
    return rows


def _champion_row(champion) -> dict:
    """The champion's row where it is no run of this `main`: its training run's metrics where it
    is one run that still exists, else the validation score its version was registered with."""
    from kana.registry import SELECTION_METRIC, is_not_found

    source = champion.tags.get("source_run_id", "")
    metrics = {SELECTION_METRIC: float(champion.tags.get(SELECTION_METRIC, "nan"))}
    if source and "," not in source:
        try:
            metrics = MlflowClient().get_run(source).data.metrics
        except MlflowException as exc:
            if not is_not_found(exc):  # purged by `mlflow gc`: the version's own score
                raise
    return _row(champion.tags.get("model_family", ""), metrics, source, True)


def _row(family: str, m: dict, run_id: str, is_champion: bool) -> dict:
    """One line of the summary. On real drawings it shows top-1 over all classes and over the
    basic 46 (the two figures the project is judged by) beside balanced accuracy."""
    return {
        "family": family,
        "val_bal_acc": m.get("val_balanced_accuracy"),
        "test_bal_acc": m.get("test_balanced_accuracy"),
        "real_acc": m.get("real_accuracy"),
        "real_b46_acc": m.get("real_basic46_accuracy"),
        "real_bal_acc": m.get("real_balanced_accuracy"),
        "train_s": m.get("train_seconds"),
        "champion": "yes" if is_champion else "",
        "run_id": run_id,
    }


def format_table(rows: list[dict]) -> str:
    def fmt(col, v):
        if v is None:
            return "-"
        if col.endswith("_acc"):
            return f"{v:.4f}"
        return f"{v:.0f}" if isinstance(v, float) else str(v)

    cols = ["family", "val_bal_acc", "test_bal_acc", "real_acc", "real_b46_acc", "real_bal_acc",
            "train_s", "champion", "run_id"]
    cells = [[fmt(c, r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [cols, *cells]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)

