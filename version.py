"""The tool's version, in one place: the CLI's --version and the User-Agent of every download read it."""

__version__ = "1.4.0"
