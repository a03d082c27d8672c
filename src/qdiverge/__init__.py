"""qdiverge: locate and explain AIMET-QuantSim vs Qualcomm DSP/HTP divergence."""

__version__ = "0.1.0"
