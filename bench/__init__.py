"""The proxy benchmark (see bench/__main__.py): `bench/run.sh` or `python -m bench`."""
