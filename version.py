"""The version, in one place: --version and the User-Agent of downloads."""
__version__ = "1.3.0"
