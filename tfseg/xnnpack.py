"""How LiteRT delegates a TFLite model to XNNPACK: the partitions, and the operators left outside.

An operator XNNPACK does not take (in its data type) runs in LiteRT's own kernels, and it splits
the graph: every split is another delegate partition, with a copy of activations in and out of
XNNPACK's layout and no fusion across it. ``delegation(tflite_bytes)`` reads what the runtime did:
after ``allocate_tensors()`` LiteRT lists every operator of the file plus one node per XNNPACK
partition (``op_name`` ``DELEGATE``) whose inputs and outputs are the tensors entering and leaving
the partition. The operators a partition replaced are found by walking the file's graph back from
the partition's outputs to its inputs (or to constants); those in no partition stayed outside.

Quantize/dequantize operators that convert the model's own input or output (an int8 model with
uint8 or float32 I/O) are reported apart as ``edges``: they run once per image on the input or
output tensor only, and XNNPACK not taking them does not split the graph.

Example:
  >>> report = delegation(to_tflite_bytes(model, "int8", random_images((64, 96, 3)), input_shape=(64, 96, 3)))
  >>> report["single_partition"], report["partitions"], [op["op"] for op in report["outside"]]
  (True, 1, [])
"""

from __future__ import annotations

from tfseg.tflite import _layer_scopes, interpreter, operator_layers

DELEGATE = "DELEGATE"
EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")


def _layers_from_name(tensor_name: str) -> list[str]:
    """The Keras layer names in a TFLite tensor name without the model at hand: in each ``;``-joined
    TensorFlow op name the first scope is the model's, the second the layer's."""
    names = []
    for piece in tensor_name.split(";"):
        scopes = _layer_scopes(piece)
        if len(scopes) > 1 and scopes[1] not in names:
            names.append(scopes[1])
    return names


def delegation(tflite, num_threads: int = 1, *, model=None) -> dict:
    """The XNNPACK delegation of a TFLite model in LiteRT.

    Args:
      tflite: the ``.tflite`` contents, or an interpreter from ``tfseg.tflite.interpreter``
        (tensors allocated: that is when LiteRT delegates).
      num_threads: interpreter threads (when given bytes; delegation does not depend on it).
      model: the Keras model the file was converted from, to name layers exactly
        (``tfseg.tflite.operator_layers``); without it they are read from the tensor names.

    Returns:
      ``{"partitions": int, "partition_nodes": [operators in each partition], "nodes": operators
      in the file, "delegated": operators in some partition, "outside": [...], "edges": [...],
      "single_partition": bool}``, where ``outside`` lists the operators in no partition apart
      from the I/O ``edges``, each ``{"index", "op", "outputs" (tensor names), "layers", "layer"}``
      (``layer``: the one to show, or None), and ``single_partition`` means exactly one
      partition with nothing outside it but edges.

    Raises:
      ImportError: ai-edge-litert is not installed.
    """
    runner = tflite if hasattr(tflite, "invoke") else interpreter(tflite, num_threads)
    nodes = runner._get_ops_details()  # LiteRT's only listing of the delegate nodes
    original = {node["index"]: node for node in nodes if node["op_name"] != DELEGATE}
    producer = {int(t): node["index"] for node in original.values() for t in node["outputs"]}
    partitions = []
    for node in nodes:
        if node["op_name"] != DELEGATE:
            continue
        stop, members, stack = {int(t) for t in node["inputs"]}, set(), [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in stop or index is None or index in members:
                continue
            members.add(index)
            stack.extend(int(t) for t in original[index]["inputs"] if t >= 0)
        partitions.append(members)

    names = {d["index"]: d["name"] for d in runner.get_tensor_details()}
    content = tflite if not hasattr(tflite, "invoke") else getattr(runner, "_model_content", None)
    known = {op["index"]: op for op in operator_layers(model, content)} if model is not None and content else {}
    model_inputs = {d["index"] for d in runner.get_input_details()}
    model_outputs = {d["index"] for d in runner.get_output_details()}
    delegated = set().union(*partitions)
    outside, edges = [], []
    for node in original.values():
        if node["index"] in delegated:
            continue
        outputs = [names.get(int(t), str(t)) for t in node["outputs"]]
        layers = known[node["index"]]["layers"] if node["index"] in known else _layers_from_name(outputs[0])
        layer = known[node["index"]]["layer"] if node["index"] in known else (layers[-1] if layers else None)
        entry = {"index": node["index"], "op": node["op_name"], "outputs": outputs, "layers": layers, "layer": layer}
        edge = node["op_name"] in EDGE_OPS and (model_inputs.intersection(int(t) for t in node["inputs"])
                                                or model_outputs.intersection(int(t) for t in node["outputs"]))
        (edges if edge else outside).append(entry)
    return {
        "partitions": len(partitions),
        "partition_nodes": [len(members) for members in partitions],
        "nodes": len(original),
        "delegated": len(delegated),
        "outside": outside,
        "edges": edges,
        "single_partition": len(partitions) == 1 and not outside,
    }


def outside_names(report: dict) -> list[str]:
    """The operators outside XNNPACK (I/O edges apart) as ``"AVERAGE_POOL_2D (head_pool)"``."""
    return [f"{op['op']} ({op['layer']})" if op["layer"] else op["op"] for op in report["outside"]]


def summary(report: dict, limit: int = 3) -> str:
    """One short line: ``"1"``, or ``"3: AVERAGE_POOL_2D (head_pool), MUL (decoder)"`` (the
    partition count, then up to ``limit`` operators outside; I/O edges are not named)."""
    described = outside_names(report)
    more = len(described) - limit
    listed = ", ".join(described[:limit]) + (f", {more} more" if more > 0 else "")
    return f"{report['partitions']}" + (f": {listed}" if listed else "")


__all__ = ["delegation", "outside_names", "summary"]
