"""clip-native model exporter: Hugging Face CLIP checkpoint (or random weights) -> model directory.

A model directory holds clip.json, image_encoder.pt, text_encoder.pt, vocab.json and merges.txt
(CONTRACT.md section 2). Run it as ``python tools/export.py --help``.
"""

# /2: the text encoder archive has forward_packed. Hub conversions by an older exporter are converted anew.
EXPORTER_ID = "clip-native-export/2"
MANIFEST_FORMAT = "clip-native/1"

__all__ = ["EXPORTER_ID", "MANIFEST_FORMAT"]
