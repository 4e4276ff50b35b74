"""tfseg: small, fast semantic segmentation for embedded devices (tf_keras)."""

__version__ = "0.1.0"
