"""Publishing a finished turn: its data as a DVC version pushed to the remote, its training sets as a Hugging Face
dataset folder with a card, and the way back (`checkout_turn`)."""

from tasks.publish.dataset import export_dataset, write_dataset
from tasks.publish.turn import load_turn
from tasks.publish.version import DataVersion, checkout_turn, publish_turn, version_note

__all__ = [
    "DataVersion",
    "checkout_turn",
    "export_dataset",
    "load_turn",
    "publish_turn",
    "version_note",
    "write_dataset",
]
