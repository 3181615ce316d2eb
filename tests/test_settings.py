"""Settings: defaults, the YAML file, STRATA_* overrides, and errors with their paths."""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from strata.cli import app
from strata.errors import ConfigError
from strata.settings import Price, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "strata.yaml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STRATA_* variable from the caller's shell may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_yaml(tmp_path: Path, data: Any, name: str = "strata.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config_error(path: Path | None = None, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, **overrides)
    return info.value.message


def test_defaults_need_no_config() -> None:
    s = load_settings()
    assert s.config is None
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.database_url is None
    assert s.redis_url is None
    assert set(s.models) == {"default", "embed-default"}
    assert s.models["default"].kind == "chat"
    assert s.models["embed-default"].kind == "embedding"
    for alias in s.models.values():
        assert len(alias.deployments) == 1
        assert alias.deployments[0].provider in s.providers
    assert s.providers["local"].type == "local_llama"
    assert s.providers["local-embed"].type == "local_embed"
    assert s.usage.flush_interval_s == 1.0


def test_yaml_file_is_loaded(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
port: 9000
log_level: debug
usage:
  batch_size: 50
auth:
  key_cache_ttl_s: 2
providers:
  together:
    type: openai_compat
    base_url: https://api.together.xyz/v1
    api_key: env:TOGETHER_API_KEY
  openai:
    type: openai_compat
    base_url: https://api.openai.com/v1
models:
  chat:
    description: primary with a fallback
    deployments:
      - provider: together
        model: meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo
        price: {input_per_1m: 0.88, output_per_1m: 1.06}
      - provider: openai
        model: gpt-3.5-turbo
""",
    )
    s = load_settings(path)
    assert s.config == path
    assert s.port == 9000
    assert s.log_level == "debug"
    assert s.usage.batch_size == 50
    assert s.usage.flush_interval_s == 1.0  # untouched defaults stay
    assert s.auth.key_cache_ttl_s == 2.0
    assert set(s.models) == {"chat"}
    deps = s.models["chat"].deployments
    assert [(d.provider, d.model) for d in deps] == [
        ("together", "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"),
        ("openai", "gpt-3.5-turbo"),
    ]
    # YAML floats become the exact decimal written, not the binary approximation.
    assert deps[0].price == Price(input_per_1m=Decimal("0.88"), output_per_1m=Decimal("1.06"))
    # Provider-specific options pass through to the provider, unresolved.
    assert s.providers["together"].options() == {
        "base_url": "https://api.together.xyz/v1",
        "api_key": "env:TOGETHER_API_KEY",
    }


def test_strata_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, {"port": 9001})
    monkeypatch.setenv("STRATA_CONFIG", str(path))
    assert load_settings().port == 9001


def test_env_overrides_beat_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, {"port": 9000, "usage": {"flush_interval_s": 5, "batch_size": 10}})
    monkeypatch.setenv("STRATA_PORT", "9100")
    monkeypatch.setenv("STRATA_USAGE__FLUSH_INTERVAL_S", "2")
    s = load_settings(path)
    assert s.port == 9100
    assert s.usage.flush_interval_s == 2.0
    # A nested override replaces one field, not the whole section from the file.
    assert s.usage.batch_size == 10


def test_keyword_overrides_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, {"port": 9000})
    monkeypatch.setenv("STRATA_PORT", "9100")
    assert load_settings(path, port=9200).port == 9200


def test_alias_shorthand_is_one_deployment(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        {
            "providers": {"fake": {"type": "fake"}},
            "models": {
                "short": {"provider": "fake", "model": "fake-1", "description": "d"},
                "priced": {
                    "provider": "fake",
                    "model": "fake-2",
                    "price": {"input_per_1m": "0.50", "output_per_1m": "1.50"},
                },
                "emb": {"kind": "embedding", "provider": "fake", "model": "fake-e"},
            },
        },
    )
    s = load_settings(path)
    short = s.models["short"]
    assert short.description == "d"
    assert [(d.provider, d.model, d.price) for d in short.deployments] == [("fake", "fake-1", None)]
    (priced,) = s.models["priced"].deployments
    assert priced.price == Price(input_per_1m=Decimal("0.50"), output_per_1m=Decimal("1.50"))
    assert s.models["emb"].kind == "embedding"
    assert s.models["emb"].deployments[0].model == "fake-e"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        pytest.param(
            {"models": {"x": {"provider": "nope", "model": "m"}}},
            "models.x.deployments.0.provider",
            id="unknown-provider",
        ),
        pytest.param(
            {
                "models": {
                    "x": {
                        "deployments": [
                            {"provider": "local", "model": "m"},
                            {"provider": "nope", "model": "m"},
                        ]
                    }
                }
            },
            "models.x.deployments.1.provider",
            id="unknown-provider-second-deployment",
        ),
        pytest.param({"bogus": 1}, "bogus", id="unknown-top-level-key"),
        pytest.param({"port": "eighty"}, "port", id="wrong-type"),
        pytest.param(
            {"models": {"x": {"provider": "local"}}},
            "models.x.deployments.0.model",
            id="deployment-without-model",
        ),
        pytest.param(
            {"models": {"x": {"deployments": []}}},
            "models.x.deployments",
            id="no-deployments",
        ),
        pytest.param(
            {"providers": {"gpu": {"type": "openai_compat", "price": {"gpu_usd_per_hour": 2}}}},
            "providers.gpu.price",
            id="gpu-price-without-fallback",
        ),
        pytest.param(
            {
                "models": {
                    "x": {
                        "provider": "local",
                        "model": "m",
                        "price": {"gpu_usd_per_hour": "2.0548"},
                    }
                }
            },
            "models.x.deployments.0.price",
            id="deployment-gpu-price-without-fallback",
        ),
    ],
)
def test_invalid_config_names_the_path(tmp_path: Path, data: Any, where: str) -> None:
    path = write_yaml(tmp_path, data)
    msg = config_error(path)
    assert str(path) in msg
    assert re.search(rf"(^|\s){re.escape(where)}:", msg, re.MULTILINE), msg


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"usage": {"flush_interval": 1}}, "usage.flush_interval"),
        ({"auth": {"key_cache_ttl": 1}}, "auth.key_cache_ttl"),
        ({"local": {"queue_size": 4}}, "local.queue_size"),
    ],
)
def test_misspelt_nested_option_is_an_error(tmp_path: Path, data: Any, where: str) -> None:
    path = write_yaml(tmp_path, data)
    msg = config_error(path)
    assert where in msg


def test_unknown_provider_lists_the_declared_ones(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"models": {"x": {"provider": "nope", "model": "m"}}})
    msg = config_error(path)
    assert "'nope'" in msg
    assert "local" in msg
    assert "local-embed" in msg


def test_gpu_price_error_explains_the_fix(tmp_path: Path) -> None:
    models = {"m": {"provider": "gpu", "model": "llama"}}
    provider: dict[str, Any] = {"type": "fake", "price": {"gpu_usd_per_hour": 2}}
    path = write_yaml(tmp_path, {"providers": {"gpu": provider}, "models": models})
    assert "fallback_tokens_per_hour" in config_error(path)
    # With the fallback it is valid.
    provider["price"] = {"gpu_usd_per_hour": "2.0548", "fallback_tokens_per_hour": 720000}
    path = write_yaml(tmp_path, {"providers": {"gpu": provider}, "models": models})
    price = load_settings(path).providers["gpu"].price
    assert price is not None
    assert price.gpu_usd_per_hour == Decimal("2.0548")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"bogus": 1, "port": "eighty", "usage": {"batch_size": 0}})
    msg = config_error(path)
    for where in ("bogus:", "port:", "usage.batch_size:"):
        assert where in msg


def test_bad_env_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_USAGE__BATCH_SIZE", "many")
    assert "usage.batch_size" in config_error()


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "providers:\n  x: {type: fake\n  y: [1, 2\n")
    msg = config_error(path)
    assert str(path) in msg
    assert "YAML" in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)
    msg = config_error(path)
    assert str(path) in msg
    assert "mapping" in msg


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert str(path) in config_error(path)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "# nothing yet\n")
    assert set(load_settings(path).models) == {"default", "embed-default"}


def test_failed_load_leaves_no_state_behind(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path, {"bogus": 1})
    config_error(bad)
    # The next load, with no file, must not still see the bad file.
    assert load_settings().port == 8000


def _env_references(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_env_references(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_references(v) for v in node))
    if isinstance(node, str) and node.startswith("env:"):
        return {node.removeprefix("env:")}
    return set()


def test_example_config_passes_config_check(monkeypatch: pytest.MonkeyPatch) -> None:
    if not EXAMPLE.exists():
        pytest.skip("examples/strata.yaml is not there")
    names = _env_references(yaml.safe_load(EXAMPLE.read_text()))
    for name in names:
        monkeypatch.setenv(name, f"test-value-for-{name}")
    result = CliRunner().invoke(app, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    # Everything the example declares validates as settings too.
    settings = load_settings(EXAMPLE)
    assert settings.models
    if names:
        # And without its secrets, check fails and names what to set.
        missing = sorted(names)[0]
        monkeypatch.delenv(missing)
        result = CliRunner().invoke(app, ["config", "check", str(EXAMPLE)])
        assert result.exit_code == 1
        assert missing in result.output
