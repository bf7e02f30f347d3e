"""A researcher's own Lightning code, written as Lightning's documentation writes it.

The tests name these classes in specs (``module = "mylab.models:LitClassifier"``) and run them
through ``tuner`` unchanged; nothing here imports ``tuner``.
"""
