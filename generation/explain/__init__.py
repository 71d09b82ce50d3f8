"""Explanations people can hear (issue 12): attributions, regions, masks, layer visualization, veracity.

Numerical modules only (no Django): `attribution` wraps captum, `regions` turns
relevance maps into time-frequency rectangles, `sonify` makes audio of them,
`pipeline` runs `manage.py explain`, `masks` runs `manage.py importance_masks`,
`layers` runs `manage.py visualize`.
"""
