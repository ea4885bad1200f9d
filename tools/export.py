#!/usr/bin/env python3
"""Writes a clip-native model directory. See ``python tools/export.py --help``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clip_native_export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
