"""tether: align language models after pre-training — feedback, training, audit in one loop."""

__version__ = "0.1.0"
