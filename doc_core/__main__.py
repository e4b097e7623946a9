"""``python -m doc_core``: the command line (:mod:`doc_core.cli`); TensorFlow is loaded only by commands that run."""

import sys

from .cli import main

sys.exit(main())
