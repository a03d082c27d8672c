"""Command-line interface (placeholder; filled in below)."""

import click

from qdiverge import __version__


@click.group()
@click.version_option(__version__, prog_name="qdiverge")
def main() -> None:
    """qdiverge: where and why a quantized model diverges between AIMET QuantSim and a Qualcomm DSP."""
