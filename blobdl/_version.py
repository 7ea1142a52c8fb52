"""The version, in a module of its own: no module needs to import the package ``__init__``."""

__version__ = "0.1.0"
