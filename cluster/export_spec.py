"""preprocessing.json of an exported run: what a program that has never heard of this project needs to feed the
model (the resize, crop and normalisation the run trained with, the input's layout) and to read its output (the
class names). Its values come from the run (cluster/run_inputs.py Preprocessing), never typed here.

    {"format": "alexnet-export", "version": 1,
     "model": {"onnx": "model.onnx", "opset": 18, "torch_export": "model.pt2", "input": "image", "output": "logits",
               "input_shape": ["batch", 3, crop, crop], "dtype": "float32", "output_is": "..."},
     "resize": [{"shorter_side": 256, "shrink": "BOX", "enlarge": "BILINEAR", "jpeg_quality": 90}, ...],
     "builder_central_square": null | int, "central_square": null | int, "crop": int, "crop_offset": "...",
     "ten_crop": "...",
     "layout": "NCHW", "channel_order": "RGB", "scale": "0-255", "mean": [3], "std": [3],
     "classes": [wnid, ...], "names": [name or wnid, ...], "run": {...}}

"shrink"/"enlarge" are PIL filter names (Image.BOX, Image.BILINEAR) for a step that makes the image smaller or
larger.
"""
SPEC_FILE = "preprocessing.json"
FORMAT, VERSION = "alexnet-export", 1

# the builder's resize (pipeline/images.py resize_shorter, the method its RESIZE_METHOD names) as PIL filters
BUILDER_FILTERS = {"box-down-bilinear-up": ("BOX", "BILINEAR")}
LOADER_FILTERS = ("BILINEAR", "BILINEAR")  # DALI's linear resize with antialiasing (cluster/preprocess.py)


def resize_steps(prep):
    steps = []
    if prep.build.size:
        shrink, enlarge = BUILDER_FILTERS[prep.build.resize_method]
        steps.append({"shorter_side": prep.build.size, "shrink": shrink, "enlarge": enlarge,
                      "jpeg_quality": prep.build.quality,
                      "note": "the shard builder's resize; it then stored the image as a JPEG of this quality"})
    if prep.loader_resize:
        steps.append({"shorter_side": prep.loader_resize, "shrink": LOADER_FILTERS[0], "enlarge": LOADER_FILTERS[1],
                      "note": "the training loader's resize, for the crop size the run trained at"})
    return steps


def export_spec(run, *, input_name, output_name, dtype, opset):
    prep, inputs = run.preprocessing, run.inputs
    return {
        "format": FORMAT, "version": VERSION,
        "model": {"onnx": "model.onnx", "opset": opset, "torch_export": "model.pt2", "input": input_name,
                  "output": output_name, "input_shape": ["batch", 3, prep.crop, prep.crop], "dtype": dtype,
                  "output_is": "logits, one per class (no softmax applied)"},
        "resize": resize_steps(prep),
        "builder_central_square": prep.build.size if prep.build.center_crop else None,
        "central_square": prep.central_square,
        "crop": prep.crop,
        "crop_offset": "centre: left = (width - crop + 1) // 2, top = (height - crop + 1) // 2",
        "ten_crop": "the paper's ten patches: the four corners and the centre (of the central square when "
                    "central_square is set), each also mirrored left-right; average the ten softmaxes",
        "layout": "NCHW", "channel_order": "RGB", "scale": "0-255",
        "normalize": "(pixel - mean) / std per channel, pixels on the 0-255 scale",
        "mean": prep.mean, "std": prep.std,
        "classes": list(inputs.classes),
        "names": [inputs.label(i) for i in range(len(inputs.classes))],
        "run": {"name": run.run_dir.name, "checkpoint": run.checkpoint, "normalize": run.config.get("normalize")},
    }
