"""MLflow entry point `train_cnn`: a thin command line over `kana.training.train_cnn`."""

from kana.cli import run_alone
from kana.training import train_cnn

if __name__ == "__main__":
    run_alone(train_cnn)
