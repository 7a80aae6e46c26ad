"""The sticker model the project trained: its networks, data, training stages and weights file."""
