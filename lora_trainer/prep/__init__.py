"""Dataset preparation (project folders, import, hygiene, tagging, organising).

Runs outside the WebUI: nothing in this package imports `modules.*` or gradio, and heavy
libraries (numpy, imagehash, onnxruntime) are imported inside the functions that need them.
"""
