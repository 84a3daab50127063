"""A literal, minimal port of D-X-Y's NASNet-super search network, the ground truth of test_nasnet_supernet.py.

Structure and names follow D-X-Y/AutoDL-Projects ``xautodl/models/cell_operations.py``,
``cell_searchs/search_cells.py`` (``MixedOp``, ``NASNetSearchCell``) and
``cell_searchs/search_model_gdas_nasnet.py`` (``NASNetworkGDAS``); ``forward_prdarts`` follows
salesforce/PR-DARTS ``PRDARTS_search/search_cells.py`` and ``search_model_prdarts_nasnet.py``.
Only what the search network uses is ported. The gates are inputs here (the originals sample
them inside ``forward``), so a test can feed both networks the same draw.

``dxy_bias``: D-X-Y's current ``cell_operations.py`` gives the 1×1 convs ``bias=not affine``;
PR-DARTS' copy of the file has ``bias=False`` (``dxy_bias=False``).
"""

from copy import deepcopy

import torch
import torch.nn as nn

DARTS_SPACE = ["none", "skip_connect", "dua_sepc_3x3", "dua_sepc_5x5", "dil_sepc_3x3", "dil_sepc_5x5",
               "avg_pool_3x3", "max_pool_3x3"]

OPS = {
    "none": lambda C_in, C_out, stride, affine, track, bias: Zero(C_in, C_out, stride),
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, track, bias: POOLING(C_in, C_out, stride, "avg", affine,
                                                                             track, bias),
    "max_pool_3x3": lambda C_in, C_out, stride, affine, track, bias: POOLING(C_in, C_out, stride, "max", affine,
                                                                             track, bias),
    "nor_conv_1x1": lambda C_in, C_out, stride, affine, track, bias: ReLUConvBN(
        C_in, C_out, (1, 1), (stride, stride), (0, 0), (1, 1), affine, track, bias),
    "dua_sepc_3x3": lambda C_in, C_out, stride, affine, track, bias: DualSepConv(
        C_in, C_out, (3, 3), (stride, stride), (1, 1), (1, 1), affine, track, bias),
    "dua_sepc_5x5": lambda C_in, C_out, stride, affine, track, bias: DualSepConv(
        C_in, C_out, (5, 5), (stride, stride), (2, 2), (1, 1), affine, track, bias),
    "dil_sepc_3x3": lambda C_in, C_out, stride, affine, track, bias: SepConv(
        C_in, C_out, (3, 3), (stride, stride), (2, 2), (2, 2), affine, track, bias),
    "dil_sepc_5x5": lambda C_in, C_out, stride, affine, track, bias: SepConv(
        C_in, C_out, (5, 5), (stride, stride), (4, 4), (2, 2), affine, track, bias),
    "skip_connect": lambda C_in, C_out, stride, affine, track, bias: Identity()
    if stride == 1 and C_in == C_out else FactorizedReduce(C_in, C_out, stride, affine, track, bias),
}


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine, track_running_stats, bias):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine, track_running_stats, bias):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x):
        return self.op(x)


class DualSepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine, track_running_stats, bias):
        super().__init__()
        self.op_a = SepConv(C_in, C_in, kernel_size, stride, padding, dilation, affine, track_running_stats, bias)
        self.op_b = SepConv(C_in, C_out, kernel_size, 1, padding, dilation, affine, track_running_stats, bias)

    def forward(self, x):
        x = self.op_a(x)
        x = self.op_b(x)
        return x


class POOLING(nn.Module):
    def __init__(self, C_in, C_out, stride, mode, affine, track_running_stats, bias):
        super().__init__()
        if C_in == C_out:
            self.preprocess = None
        else:
            self.preprocess = ReLUConvBN(C_in, C_out, 1, 1, 0, 1, affine, track_running_stats, bias)
        if mode == "avg":
            self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        else:
            self.op = nn.MaxPool2d(3, stride=stride, padding=1)

    def forward(self, inputs):
        x = self.preprocess(inputs) if self.preprocess else inputs
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.C_in, self.C_out, self.stride = C_in, C_out, stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, stride, affine, track_running_stats, bias):
        super().__init__()
        assert stride == 2
        self.relu = nn.ReLU(inplace=False)
        C_outs = [C_out // 2, C_out - C_out // 2]
        self.convs = nn.ModuleList()
        for i in range(2):
            self.convs.append(nn.Conv2d(C_in, C_outs[i], 1, stride=stride, padding=0, bias=bias))
        self.pad = nn.ConstantPad2d((0, 1, 0, 1), 0)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x):
        x = self.relu(x)
        y = self.pad(x)
        out = torch.cat([self.convs[0](x), self.convs[1](y[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


class MixedOp(nn.Module):
    def __init__(self, space, C, stride, affine, track_running_stats, bias):
        super().__init__()
        self._ops = nn.ModuleList()
        for primitive in space:
            self._ops.append(OPS[primitive](C, C, stride, affine, track_running_stats, bias))

    def forward_gdas(self, x, weights, index):
        return self._ops[index](x) * weights[index]

    def forward_darts(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))

    def forward_prdarts(self, x, weights, indexs):  # PR-DARTS search_cells.py
        if len(indexs) == 0:
            return self._ops[0](x)
        output = self._ops[indexs[0].item()](x) * weights[indexs[0].item()]
        for i in range(1, len(indexs)):
            output += self._ops[indexs[i].item()](x) * weights[indexs[i].item()]
        return output


class NASNetSearchCell(nn.Module):
    def __init__(self, space, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, affine,
                 track_running_stats, bias):
        super().__init__()
        self.reduction = reduction
        self.op_names = deepcopy(space)
        if reduction_prev:
            self.preprocess0 = OPS["skip_connect"](C_prev_prev, C, 2, affine, track_running_stats, bias)
        else:
            self.preprocess0 = OPS["nor_conv_1x1"](C_prev_prev, C, 1, affine, track_running_stats, bias)
        self.preprocess1 = OPS["nor_conv_1x1"](C_prev, C, 1, affine, track_running_stats, bias)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        self.edges = nn.ModuleDict()
        for i in range(self._steps):
            for j in range(2 + i):
                node_str = "{:}<-{:}".format(i, j)
                stride = 2 if reduction and j < 2 else 1
                self.edges[node_str] = MixedOp(space, C, stride, affine, track_running_stats, bias)
        self.edge_keys = sorted(list(self.edges.keys()))
        self.edge2index = {key: i for i, key in enumerate(self.edge_keys)}
        self.num_edges = len(self.edges)

    def forward_gdas(self, s0, s1, weightss, indexs):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        for i in range(self._steps):
            clist = []
            for j, h in enumerate(states):
                node_str = "{:}<-{:}".format(i, j)
                op = self.edges[node_str]
                weights = weightss[self.edge2index[node_str]]
                index = indexs[self.edge2index[node_str]].item()
                clist.append(op.forward_gdas(h, weights, index))
            states.append(sum(clist))
        return torch.cat(states[-self._multiplier:], dim=1)

    def forward_darts(self, s0, s1, weightss):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        for i in range(self._steps):
            clist = []
            for j, h in enumerate(states):
                node_str = "{:}<-{:}".format(i, j)
                op = self.edges[node_str]
                weights = weightss[self.edge2index[node_str]]
                clist.append(op.forward_darts(h, weights))
            states.append(sum(clist))
        return torch.cat(states[-self._multiplier:], dim=1)

    def forward_prdarts(self, s0, s1, weightss):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        for i in range(self._steps):
            clist = []
            for j, h in enumerate(states):
                node_str = "{:}<-{:}".format(i, j)
                op = self.edges[node_str]
                weights = weightss[self.edge2index[node_str]]
                index = torch.nonzero(weights)
                clist.append(op.forward_prdarts(h, weights, index))
            if len(clist):
                states.append(sum(clist))
        return torch.cat(states[-self._multiplier:], dim=1)


class NASNetworkGDAS(nn.Module):
    def __init__(self, C, N, steps, multiplier, stem_multiplier, num_classes, search_space, affine,
                 track_running_stats, dxy_bias=True):
        super().__init__()
        bias = (not affine) if dxy_bias else False
        self._C = C
        self._layerN = N
        self._steps = steps
        self._multiplier = multiplier
        self.stem = nn.Sequential(
            nn.Conv2d(3, C * stem_multiplier, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(C * stem_multiplier),
        )
        layer_channels = [C] * N + [C * 2] + [C * 2] * (N - 1) + [C * 4] + [C * 4] * (N - 1)
        layer_reductions = [False] * N + [True] + [False] * (N - 1) + [True] + [False] * (N - 1)
        num_edge, edge2index = None, None
        C_prev_prev, C_prev, C_curr, reduction_prev = C * stem_multiplier, C * stem_multiplier, C, False
        self.cells = nn.ModuleList()
        for C_curr, reduction in zip(layer_channels, layer_reductions):
            cell = NASNetSearchCell(search_space, steps, multiplier, C_prev_prev, C_prev, C_curr, reduction,
                                    reduction_prev, affine, track_running_stats, bias)
            if num_edge is None:
                num_edge, edge2index = cell.num_edges, cell.edge2index
            else:
                assert num_edge == cell.num_edges and edge2index == cell.edge2index
            self.cells.append(cell)
            C_prev_prev, C_prev, reduction_prev = C_prev, multiplier * C_curr, reduction
        self.op_names = deepcopy(search_space)
        self._Layer = len(self.cells)
        self.edge2index = edge2index
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.arch_normal_parameters = nn.Parameter(1e-3 * torch.randn(num_edge, len(search_space)))
        self.arch_reduce_parameters = nn.Parameter(1e-3 * torch.randn(num_edge, len(search_space)))

    def genotype(self):
        def _parse(weights):
            gene = []
            for i in range(self._steps):
                edges = []
                for j in range(2 + i):
                    node_str = "{:}<-{:}".format(i, j)
                    ws = weights[self.edge2index[node_str]]
                    for k, op_name in enumerate(self.op_names):
                        if op_name == "none":
                            continue
                        edges.append((op_name, j, ws[k]))
                edges = sorted(edges, key=lambda x: -x[-1])
                selected_edges = edges[:2]
                gene.append(tuple(selected_edges))
            return gene

        with torch.no_grad():
            gene_normal = _parse(torch.softmax(self.arch_normal_parameters, dim=-1).cpu().numpy())
            gene_reduce = _parse(torch.softmax(self.arch_reduce_parameters, dim=-1).cpu().numpy())
        concat = list(range(2 + self._steps - self._multiplier, self._steps + 2))
        return {"normal": gene_normal, "normal_concat": concat, "reduce": gene_reduce, "reduce_concat": list(concat)}

    def _head(self, s1):
        out = self.lastact(s1)
        out = self.global_pooling(out)
        out = out.view(out.size(0), -1)
        logits = self.classifier(out)
        return out, logits

    def forward_gdas(self, inputs, normal_hardwts, normal_index, reduce_hardwts, reduce_index):
        """D-X-Y ``NASNetworkGDAS.forward`` after ``get_gumbel_prob``: the sampled gates are given."""
        s0 = s1 = self.stem(inputs)
        for cell in self.cells:
            if cell.reduction:
                hardwts, index = reduce_hardwts, reduce_index
            else:
                hardwts, index = normal_hardwts, normal_index
            s0, s1 = s1, cell.forward_gdas(s0, s1, hardwts, index)
        return self._head(s1)

    def forward_darts(self, inputs, normal_w, reduce_w):
        """D-X-Y ``NASNetworkDARTS.forward`` with the softmax weights given."""
        s0 = s1 = self.stem(inputs)
        for cell in self.cells:
            ww = reduce_w if cell.reduction else normal_w
            s0, s1 = s1, cell.forward_darts(s0, s1, ww)
        return self._head(s1)

    def forward_prdarts(self, inputs, normal_hardwts, reduce_hardwts):
        """PR-DARTS ``NASNetworkPRDARTS.forward`` after ``get_gumbel_prob``, without the regulariser."""
        s0 = s1 = self.stem(inputs)
        for cell in self.cells:
            hardwts = reduce_hardwts if cell.reduction else normal_hardwts
            s0, s1 = s1, cell.forward_prdarts(s0, s1, hardwts)
        return self._head(s1)
