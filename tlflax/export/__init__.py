"""Exporting a trained classifier for deployment (`python main.py --mode=export`).

`exporter` writes WORKDIR/export/ and checks each file; `saved_model` (jax2tf), `keras_model`
(the weights written back into the backbone's Keras application) and `tflite` (Keras's LiteRT
exporter, and a runner for TFLite files) make the formats.
"""
