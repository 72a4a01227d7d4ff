"""What the seed's applications need on top of a trained model: routing rules for customer service
(``polytask route``, ``POST /route``)."""

from polytask.recipes.routing import RoutingRules, route

__all__ = ["RoutingRules", "route"]
