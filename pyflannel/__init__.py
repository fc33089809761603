"""pyflannel: a Python drop-in for flannel's flanneld."""

__version__ = "0.1.0"
