"""The [gateway] keys bounding half-open IKE SAs (issue #19, RFC 8019)."""

from __future__ import annotations

import pytest

from tests.tunnel.ops.helpers import MINIMAL
from tunnel.ops.config import ConfigError, parse_config


def test_half_open_defaults_and_keys():
    defaults = parse_config(MINIMAL).gateway
    assert (defaults.cookie_threshold, defaults.half_open_per_ip, defaults.half_open_limit) == (10, 5, 5000)
    gateway = parse_config("[gateway]\ncookie_threshold = 0\nhalf_open_per_ip = 2\nhalf_open_limit = 100\n"
                           + MINIMAL).gateway
    assert (gateway.cookie_threshold, gateway.half_open_per_ip, gateway.half_open_limit) == (0, 2, 100)


def test_a_half_open_limit_of_zero_is_refused():
    with pytest.raises(ConfigError) as info:
        parse_config("[gateway]\nhalf_open_per_ip = 0\nhalf_open_limit = -1\n" + MINIMAL)
    joined = "\n".join(info.value.problems)
    assert "gateway.half_open_per_ip" in joined and "gateway.half_open_limit" in joined
