"""pneumoscan: screen pediatric chest X-rays for pneumonia. Not a medical device."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pneumoscan")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
