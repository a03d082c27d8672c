"""Single-op probes that measure what an integer backend computes, code by code.

``graph`` builds tiny QDQ models with exact integer inputs, ``arith`` holds the exact rational
candidate models and the comparison, and ``htp`` defines the probes run on Qualcomm's HTP backend.
"""
