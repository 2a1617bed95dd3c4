"""Model zoo; importing this package registers the built-in models."""

from plural.models import text
from plural.models.zoo import ModelSpec, parse_model

__all__ = ["ModelSpec", "parse_model", "text"]
