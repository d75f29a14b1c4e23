"""Kubernetes resource quantities ("4", "500m", "16Gi", "1.5G", "1Ei", "100n") as numbers,
read with the Kubernetes client's own parser, so that tunelab accepts what the cluster
accepts and nothing else."""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any

from tunelab.errors import excerpt


@cache
def _kubernetes_parse() -> Any:
    # Imported when first needed: the kubernetes package costs a quarter of a second
    # to import, which every command of the CLI would pay.
    from kubernetes.utils.quantity import parse_quantity

    return parse_quantity


def parse_quantity(text: str | int | float) -> Decimal:
    """The value of a quantity; ValueError naming what is wrong (negative included)."""
    try:
        value = Decimal(_kubernetes_parse()(str(text).strip()))
    except (ValueError, ArithmeticError):
        raise ValueError(
            f"{excerpt(text, 40)} is not a quantity (examples: 4, 500m, 16Gi, 1.5G)"
        ) from None
    if value < 0 or not value.is_finite():
        raise ValueError(f"{excerpt(text, 40)} is not a quantity: it must be 0 or more")
    return value
