"""The shipped example: dictionaries trained here for SmolLM2-135M-Instruct and the recipe behind ``atlas.db.example``.

``python -m examples.smollm2.build_example`` rebuilds the atlas; ``python -m examples.smollm2.train``
is the trainer alone. Both run from the repository root with the ``build`` extra installed.
"""
