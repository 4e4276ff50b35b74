"""Which output channels of a functional model must be pruned together: the channel-group analysis.

Removing filter k of a convolution removes channel k of its output tensor, and so of every
tensor that carries that channel further: through batch norm, activations, pooling, padding,
resizing and depthwise convolutions (channel-preserving layers), and into the inputs of the
next convolutions. Element-wise merges (``Add`` of a residual block, ``Multiply`` of a gate)
tie the channels of their inputs together, so all the convolutions feeding one merge chain form
a single group, pruned jointly. ``Concatenate`` places groups side by side at channel offsets.

The analysis walks the graph once (layers are in topological order), giving every tensor a
*layout*: the list of ``(group, channels)`` segments its channel axis is made of. Groups are
merged with a union-find. A group is prunable when at least one convolution produces it and
nothing pins it: the model input and outputs (the classifier's channels are the classes), and
the inputs and outputs of layers this module does not understand (``Reshape``, ``Flatten``,
grouped convolutions, depth multipliers, ...), which are listed with the reason.
"""

from __future__ import annotations

import dataclasses

from tfseg._keras import keras
from tfseg.errors import ConfigError

layers = keras.layers

# Layers that create new channels: their filters are what gets pruned.
PRODUCERS = (layers.Conv2D, layers.Conv2DTranspose, layers.Dense, layers.SeparableConv2D)
# Layers whose output channel c depends on input channel c only (weights, if any, per channel).
CHANNEL_WISE = (
    layers.BatchNormalization, layers.ReLU, layers.Activation, layers.Dropout, layers.SpatialDropout2D,
    layers.MaxPooling2D, layers.AveragePooling2D, layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D,
    layers.ZeroPadding2D, layers.Cropping2D, layers.UpSampling2D, layers.Resizing, layers.Softmax,
    layers.LeakyReLU, layers.PReLU, layers.ELU,
)
# Element-wise merges: all inputs share one channel layout.
MERGES = (layers.Add, layers.Multiply, layers.Subtract, layers.Maximum, layers.Minimum, layers.Average)


@dataclasses.dataclass
class ChannelGroup:
    """Channels that are pruned together.

    Attributes:
      id: the group's number.
      size: its number of channels.
      sources: names of the layers producing these channels (several for a residual chain).
      pinned: why it may not be pruned (empty when it may).
    """

    id: int
    size: int
    sources: list = dataclasses.field(default_factory=list)
    pinned: list = dataclasses.field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return bool(self.sources) and not self.pinned


class _UnionFind:
    def __init__(self):
        self.parent = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def model_node(model, layer):
    """The node (call) of ``layer`` that belongs to ``model``'s graph.

    A layer can have call nodes in other models too (e.g. after ``clone_model`` shared it).

    Raises:
      ConfigError: the layer is called more than once inside the model (shared layers).
    """
    nodes = [node for i, node in enumerate(layer.inbound_nodes) if f"{layer.name}_ib-{i}" in model._network_nodes]
    if len(nodes) != 1:
        raise ConfigError(
            f"layer {layer.name!r} is called {len(nodes)} times in model {model.name!r}; filter pruning "
            "needs a flat functional model whose layers are each called once"
        )
    return nodes[0]


def node_inputs(node) -> list:
    inputs = node.input_tensors
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _is_channel_wise(layer) -> bool:
    if isinstance(layer, layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1
    if isinstance(layer, layers.Rescaling):
        return True
    return isinstance(layer, CHANNEL_WISE)


def _producer_problem(layer) -> str | None:
    """Why a producing layer's input channels cannot be sliced, if they cannot."""
    if isinstance(layer, layers.SeparableConv2D) and layer.depth_multiplier != 1:
        return "SeparableConv2D with depth_multiplier != 1"
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups})"
    return None


@dataclasses.dataclass
class ChannelGraph:
    """The result of :func:`analyse`: channel groups and the layout of every layer's input/output."""

    groups: dict  # id -> ChannelGroup (merged groups only)
    input_layouts: dict  # layer name -> list of layouts, one per input tensor
    output_layouts: dict  # layer name -> layout of its output
    order: list  # layer names, topological

    def layout_size(self, layout) -> int:
        return sum(size for _, size in layout)


def analyse(model) -> ChannelGraph:
    """Finds the channel groups of a flat functional model (see the module docstring).

    Raises:
      ConfigError: nested models, layers with several outputs, shared layers.
    """
    uf = _UnionFind()
    sizes, sources, pins = {}, {}, {}

    def new_group(size: int, source: str | None = None, pin: str | None = None) -> int:
        gid = uf.add()
        sizes[gid], sources[gid], pins[gid] = int(size), [source] if source else [], [pin] if pin else []
        return gid

    def pin(layout, reason: str):
        for gid, _ in layout:
            pins[gid].append(reason)

    layouts = {}  # id(tensor) -> layout
    input_layouts, output_layouts, order = {}, {}, []
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, keras.Model):
            raise ConfigError(f"nested model {layer.name!r}: filter pruning needs a flat functional model")
        order.append(layer.name)
        if isinstance(layer, layers.InputLayer):
            out = layer.output
            layouts[id(out)] = [(new_group(out.shape[-1], pin="model input"), out.shape[-1])]
            input_layouts[layer.name], output_layouts[layer.name] = [], layouts[id(out)]
            continue
        node = model_node(model, layer)
        ins = [layouts[id(t)] for t in node_inputs(node)]
        outputs = node.output_tensors
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ConfigError(f"layer {layer.name!r} ({kind}) has {len(outputs)} outputs; not supported")
            outputs = outputs[0]
        channels = outputs.shape[-1]

        if isinstance(layer, PRODUCERS):
            problem = _producer_problem(layer)
            if problem:
                pin(ins[0], f"input of {layer.name} ({problem})")
                out = [(new_group(channels, pin=f"output of {layer.name} ({problem})"), channels)]
            else:
                out = [(new_group(channels, source=layer.name), channels)]
        elif _is_channel_wise(layer):
            out = ins[0]
            if isinstance(layer, layers.Rescaling) and _per_channel_rescaling(layer):
                pin(out, f"per-channel Rescaling {layer.name}")
        elif isinstance(layer, MERGES):
            shapes = [[size for _, size in layout] for layout in ins]
            if any(shape != shapes[0] for shape in shapes):
                for layout in ins:
                    pin(layout, f"input of {layer.name} ({kind}) with differently concatenated inputs")
            else:
                for layout in ins[1:]:
                    for (a, _), (b, _) in zip(ins[0], layout):
                        uf.union(a, b)
            out = ins[0]
        elif isinstance(layer, layers.Concatenate) and layer.axis in (-1, len(outputs.shape) - 1):
            out = [segment for layout in ins for segment in layout]
        else:
            for layout in ins:
                pin(layout, f"input of {layer.name} ({kind}, not understood by filter pruning)")
            out = [(new_group(channels, pin=f"output of {layer.name} ({kind})"), channels)]
        layouts[id(outputs)] = out
        input_layouts[layer.name], output_layouts[layer.name] = ins, out

    for output in model.outputs:
        pin(layouts[id(output)], "model output (the classes)")

    # Merge the union-find sets into final groups and rewrite layouts with their root ids.
    groups = {}
    for gid in range(len(uf.parent)):
        root = uf.find(gid)
        group = groups.setdefault(root, ChannelGroup(root, sizes[root]))
        if sizes[gid] != group.size:
            raise ConfigError(f"merged channel groups of different sizes ({sizes[gid]} vs {group.size}): a bug")
        group.sources += [s for s in sources[gid] if s not in group.sources]
        group.pinned += [p for p in pins[gid] if p not in group.pinned]

    def rooted(layout):
        return [(uf.find(gid), size) for gid, size in layout]

    input_layouts = {name: [rooted(layout) for layout in ins] for name, ins in input_layouts.items()}
    output_layouts = {name: rooted(layout) for name, layout in output_layouts.items()}
    return ChannelGraph(groups, input_layouts, output_layouts, order)


def _per_channel_rescaling(layer) -> bool:
    config = layer.get_config()
    return any(isinstance(config.get(key), (list, tuple)) for key in ("scale", "offset"))
