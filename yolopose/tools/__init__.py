"""Command-line tools around the trainer (``python -m yolopose.tools.<name>``)."""
