"""One source of truth: the gateway prices unpriced deployments from the planner's table."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.errors import ConfigError
from strata.planner.catalog import gateway_default, load_table
from strata.settings import load_settings
from strata.usage.pricing import Pricer

LLAMA_70B = "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)


def settings(usage: dict[str, Any] | None = None, **models: Any) -> Any:
    return load_settings(
        None,
        usage=usage or {},
        providers={
            "together": {"type": "openai_compat", "base_url": "https://api.together.xyz/v1"},
            # Another name for the same API: matched by its host.
            "tg": {"type": "openai_compat", "base_url": "https://api.together.xyz/v1"},
            "openai": {"type": "openai_compat", "base_url": "https://api.openai.com/v1"},
            "elsewhere": {"type": "openai_compat", "base_url": "http://127.0.0.1:9/v1"},
        },
        models=models,
    )


def test_unpriced_deployments_take_the_table_price() -> None:
    s = settings(
        llama={"provider": "together", "model": LLAMA_70B},
        by_host={"provider": "tg", "model": "llama-3.1-70b"},
        gpt={"provider": "openai", "model": "gpt-3.5-turbo"},
        unknown={"provider": "elsewhere", "model": LLAMA_70B},
    )
    pricer = Pricer(s)
    table = load_table()
    price = table.api("together/llama-3.1-70b")
    assert price is not None
    # The planner's figure for 21M input + 9M output tokens is the gateway's.
    assert pricer.cost("together", LLAMA_70B, 21_000_000, 9_000_000) == Decimal("28.02")
    assert pricer.price_of("tg", "llama-3.1-70b").input_per_1m == price.input_per_1m
    assert pricer.cost("openai", "gpt-3.5-turbo", 1000, 500) == Decimal("0.00125")
    # No entry for an unknown endpoint: free, as before.
    assert pricer.cost("elsewhere", LLAMA_70B, 1000, 1000) == 0


def test_explicit_prices_win_and_defaults_can_be_turned_off() -> None:
    explicit = settings(
        llama={
            "provider": "together",
            "model": LLAMA_70B,
            "price": {"input_per_1m": "1", "output_per_1m": "1"},
        }
    )
    assert Pricer(explicit).cost("together", LLAMA_70B, 1_000_000, 0) == Decimal(1)
    off = settings({"default_prices": False}, llama={"provider": "together", "model": LLAMA_70B})
    assert Pricer(off).cost("together", LLAMA_70B, 1_000_000, 0) == 0


def test_a_custom_price_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    data: dict[str, Any] = {
        "version": "test",
        "apis": {
            "together": {
                "models": {
                    "x": {
                        "model": LLAMA_70B,
                        "input_per_1m": "3",
                        "output_per_1m": "4",
                        "source": "test",
                        "as_of": "2026-01-01",
                    }
                }
            }
        },
    }
    path.write_text(yaml.safe_dump(data))
    s = settings({"price_file": str(path)}, llama={"provider": "together", "model": LLAMA_70B})
    assert Pricer(s).cost("together", LLAMA_70B, 1_000_000, 1_000_000) == Decimal(7)
    data["apis"]["together"]["models"]["x"]["input_per_1m"] = "-1"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        Pricer(s)
    assert "apis.together.models.x.input_per_1m" in err.value.message


def test_gateway_default_matching() -> None:
    table = load_table()
    assert gateway_default(table, "together", None, LLAMA_70B) is not None
    assert gateway_default(table, "x", "https://api.openai.com/v1", "gpt-3.5-turbo") is not None
    assert gateway_default(table, "x", "https://example.com/v1", "gpt-3.5-turbo") is None
    assert gateway_default(table, "openai", None, "gpt-9") is None
