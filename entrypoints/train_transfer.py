"""MLflow entry point `train_transfer`: a thin command line over `kana.training.train_transfer`."""

from kana.cli import run_alone
from kana.training import train_transfer

if __name__ == "__main__":
    run_alone(train_transfer)
