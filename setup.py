"""Packaging lives in pyproject.toml; this file exists for the native extension (csrc/)."""

from setuptools import setup

setup()
