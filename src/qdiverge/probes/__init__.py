"""Single-op probes that measure what an integer backend computes, code by code.

``graph`` builds tiny QDQ models with exact integer inputs, ``arith`` holds the exact rational
candidate models and the comparison, ``runner`` runs a graph on HTP; ``conv``, ``bias``, ``lut``,
``eltwise``, ``rescale``, ``fusion`` and ``inputs`` define the probes per op family.
"""
