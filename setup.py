"""Packaging for smoltbot: the `smoltbot` package, its SQL migrations, and the twistd plugin."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("smoltbot/__init__.py").read_text()).group(1)

setup(
    name="smoltbot",
    version=VERSION,
    description="Self-hosted gateway between AI agents and the Anthropic, OpenAI and Gemini APIs",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=[*find_packages(include=["smoltbot", "smoltbot.*"]), "smoltbot.sql", "twisted.plugins"],
    package_dir={"smoltbot.sql": "sql"},
    package_data={"smoltbot.sql": ["*.sql"]},
    install_requires=[
        "Twisted[tls]>=24.7,<27",
        "klein>=24.8,<25",
        "treq>=24.9,<27",
        "txpostgres>=1.7,<2",
        "psycopg2-binary>=2.9.9,<3",
        "txredisapi>=1.4.10,<2",
        "prometheus-client>=0.20,<1",
        "PyJWT[crypto]>=2.8,<3",
        "brotli>=1.2,<2",
    ],
    extras_require={
        "test": ["anthropic>=2,<3", "openai>=3,<4", "google-genai>=3,<4", "hypothesis>=6.100,<7"],
    },
    entry_points={"console_scripts": ["smoltbot = smoltbot.cli:main"]},
    zip_safe=False,
)
