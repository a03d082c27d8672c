"""Encodings: AIMET JSON (0.6.1 / 1.0.0 / 2.0.0), QDQ models and quantsim configs -> ``EncodingSet``.

``load_encodings`` lives in ``encodings.load``; this package file stays import-free so that
``encodings.schema`` can be imported from anywhere (``quant`` included) without a cycle.
"""
