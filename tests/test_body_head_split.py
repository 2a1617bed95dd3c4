"""Methods built on a body/head split refuse a model without one, before any training."""

from __future__ import annotations

from typing import Any

import pytest

import plural
from helpers_models import NoBodyHeadSplit

NEEDS_BODY_AND_HEAD = {
    "fedbabu": "'body' and 'head'",
    "fedrod": "'body' and 'head'",
    "fedpac": "'body' and 'head'",
    "fedas": "'body' and 'head'",
    "feddbe": "no representation to attach to",
    "fedcp": "no representation to attach to",
    "gpfl": "no representation to attach to",
}


@pytest.mark.parametrize(("name", "message"), sorted(NEEDS_BODY_AND_HEAD.items()))
def test_a_model_without_a_body_and_head_is_a_config_error(
    tiny_config: dict[str, Any], name: str, message: str
) -> None:
    with pytest.raises(plural.ConfigError, match=message):
        plural.run({**tiny_config, "algorithm": {"name": name}}, model=NoBodyHeadSplit())
