"""callstream processor: a pure, broker-free core (events, episodes, windows, sketch,
rules) with thin adapters (Faust worker, CLI). Importing this package is cheap: no Numba
compilation and no Kafka client imports happen here."""

__all__ = ["__version__"]
__version__ = "0.1.0"
