"""contrastkit: contrastive representation learning with swappable objectives, views and negatives.

The spine of every method is ``data -> views -> encoder (+ head) -> negatives -> score -> objective``;
each stage lives in its own subpackage.
"""

__version__ = "0.1.0"
