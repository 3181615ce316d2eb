"""A small plan, as data, for tests that change one field at a time."""

from __future__ import annotations

import copy
from typing import Any

import pytest

SRC = {"source": "test", "as_of": "2026-03-01"}

BASE: dict[str, Any] = {
    "plan": 1,
    "name": "test plan",
    "prices": {
        "apis": {
            "acme": {
                "models": {
                    "big": {
                        "input_per_1m": "2",
                        "output_per_1m": "6",
                        "smaller": "acme/small",
                        **SRC,
                    },
                    "small": {"input_per_1m": "0.5", "output_per_1m": "1", **SRC},
                    "batchy": {
                        "input_per_1m": "1",
                        "output_per_1m": "1",
                        "batch_discount": "0.5",
                        **SRC,
                    },
                }
            }
        },
        "gpus": {
            "gpu-a": {"on_demand_per_hour": "2", "reserved_per_month": "1000", **SRC},
        },
        "services": {
            "db": {"per_month": "40", **SRC},
            "redis": {"per_month": "15", **SRC},
            "ci-minute": {"per_unit": "0.01", "unit": "minute", **SRC},
        },
    },
    "workload": {
        "monthly_tokens": 10_000_000,
        "input_share": 0.75,
        "mix": [
            {"id": "main", "name": "Main", "model": "acme/big", "weight": 3},
            {"id": "side", "name": "Side", "model": "acme/batchy", "weight": 1},
        ],
    },
    "compute": [
        {"id": "train", "name": "Training", "gpu": "gpu-a", "use": "fine_tuning", "hours": 10},
        {"id": "serve", "name": "Serving", "gpu": "gpu-a", "billing": "reserved"},
    ],
    "infrastructure": [{"id": "db", "name": "Database", "service": "db", "role": "database"}],
    "deployment": [{"id": "ci", "name": "CI", "service": "ci-minute", "quantity": 300}],
}


@pytest.fixture
def plan_data() -> dict[str, Any]:
    return copy.deepcopy(BASE)
