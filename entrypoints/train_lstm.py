"""MLflow entry point `train_lstm`: a thin command line over `kana.training.train_lstm`."""

from kana.cli import run_alone
from kana.training import train_lstm

if __name__ == "__main__":
    run_alone(train_lstm)
