"""gristmill: turn raw web-scale data into training-ready Arrow shards."""

__version__ = "0.1.0"
