"""Shipped configuration files: the feature definition and the stage taxonomies."""
