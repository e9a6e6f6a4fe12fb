"""A scenario small enough to enumerate every hidden path."""

from __future__ import annotations

from typing import Any


def tiny_parameters() -> dict[str, Any]:
    """Three stages with steps back, two activity levels, a few event types, amounts.

    Small enough for brute-force enumeration of every hidden path. Some rates are zero
    (a purchase is impossible outside the purchase stage) so impossible paths occur.
    """
    return {
        "name": "tiny",
        "arrivals": {"start": "2024-01-01", "days": 3, "trend": 0.5},
        "stages": ["awareness", "consideration", "purchase"],
        "initial": {"awareness": 0.6, "consideration": 0.4},
        "transitions": {
            "awareness": {"consideration": 0.3, "purchase": 0.05},
            "consideration": {"awareness": 0.2, "purchase": 0.3},
            "purchase": {"consideration": 0.25},
        },
        "dormancy": {"awareness": 0.2, "consideration": 0.1, "purchase": 0.15},
        "activity": {"levels": [0.5, 2.0], "probabilities": [0.4, 0.6]},
        "arrival_events": {
            "awareness": {"ad_click": 0.7, "search_visit": 0.3},
            "consideration": {"search_visit": 0.6, "ad_click": 0.4},
        },
        "background_rate": 0.0,
        "rates": {
            "awareness": {"page_view": 0.8, "ad_click": 0.3},
            "consideration": {"page_view": 0.5, "product_view": 0.9},
            "purchase": {"product_view": 0.3, "purchase": 0.6, "page_view": 0.2},
        },
        "amounts": {
            "purchase": {
                "median": {"awareness": 20, "consideration": 30, "purchase": 50},
                "sigma": {"awareness": 0.5, "consideration": 0.6, "purchase": 0.8},
            }
        },
        "channels": {"default": {"web": 0.7, "app": 0.3}},
    }
