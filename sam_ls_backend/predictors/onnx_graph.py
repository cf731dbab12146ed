"""The interface of the two ONNX graphs `onnx_export.py` writes and `onnx_runtime.py` serves: names, shapes,
metadata keys. Dependency-free, so the server and the exporter share it without importing each other."""

IMAGE_SIZE = 1024  # SAM's square encoder input
EMBEDDING_SHAPE = (1, 256, 64, 64)
LOW_RES_SHAPE = (1, 1, 256, 256)  # the decoder's logits, and the refinement's mask_input

# Inputs and outputs (see `PromptGraph` in onnx_export.py for shapes and frames).
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "multimask",
                  "input_size", "original_size")
DECODER_OUTPUTS = ("mask", "score", "low_res_logits")
ENCODER_INPUTS = ("pixels",)
ENCODER_OUTPUTS = ("image_embeddings",)
PADDING_POINT, BOX_CORNERS = -1, (2, 3)  # point labels beside SAM's 1 (positive) and 0 (negative)

# Metadata written into every exported graph: what it is, and which checkpoint's weights it holds.
GRAPH_KEY, MODEL_TYPE_KEY, WEIGHTS_KEY = "sam_graph", "sam_model_type", "sam_weights"
DECODER_GRAPH, ENCODER_GRAPH = "prompt-decoder", "image-encoder"
