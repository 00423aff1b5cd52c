"""MLflow entry point `register`: a thin command line over `kana.registry.register`."""

from kana.cli import run_alone
from kana.registry import register

if __name__ == "__main__":
    run_alone(register)
