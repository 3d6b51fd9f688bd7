"""Console entry points (``lit-tricks-train``, ``-report``, ``-ensemble``, ``-curves``, ``-bag``, ``-workers``).

Each module's ``main`` holds the command's logic; ``scripts/*.py`` are thin wrappers around them.
"""
