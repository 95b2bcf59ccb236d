import sys

from .cli import run

run()
