"""ONNX models built with onnx.helper the way exporters write them, for the import tests."""

from __future__ import annotations

import numpy as np


def decoder_block(d=64, heads=4, kv_heads=2, head_dim=16, ffn=128, eps=1e-6, seed=0,
                  additive_mask=False, static=None):
    """A Llama/Qwen2-style decoder block as torch.onnx exports it: dynamic batch_size and
    sequence_length, RMSNorm as Pow/ReduceMean/Add/Sqrt/Div/Mul, rotary embedding from
    position_ids (MatMul of inv_freq and positions, Cos/Sin, rotate_half with Slice/Neg/
    Concat), grouped-query attention (repeat_kv as Unsqueeze/Expand/Reshape), every reshape
    target computed by Shape -> Gather -> Unsqueeze -> Concat, a causal mask from Range, and
    a SwiGLU MLP. `additive_mask` adds a 0/-inf mask to the scores (as torch's
    scaled_dot_product_attention does) instead of selecting with Where. `static=(B, S)`
    exports fixed sizes instead of dynamic axes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    group = heads // kv_heads

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(name, values, dtype=np.int64):
        return init(name, np.array(values, dtype=dtype))

    def node(op, inputs, name, **attrs):
        out = f"/model/layers.0/{name}_output_0"
        nodes.append(helper.make_node(op, inputs, [out], name=f"/model/layers.0/{name}",
                                      **attrs))
        return out

    def weight(name, rows, cols):
        return init(name, (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32))

    x = "hidden_states"
    pos = "position_ids"
    # the shape chain every reshape target is computed from
    shape = node("Shape", [x], "Shape")
    batch = node("Gather", [shape, const("c0", 0)], "Gather", axis=0)
    seq = node("Gather", [shape, const("c1", 1)], "Gather_1", axis=0)
    ax0 = const("axes0", [0])
    batch_u = node("Unsqueeze", [batch, ax0], "Unsqueeze")
    seq_u = node("Unsqueeze", [seq, ax0], "Unsqueeze_1")
    q_shape = node("Concat", [batch_u, seq_u, const("nh", [heads]), const("hd", [head_dim])],
                   "Concat", axis=0)
    kv_shape = node("Concat", [batch_u, seq_u, const("nkv", [kv_heads]), const("hd2", [head_dim])],
                    "Concat_1", axis=0)

    def rmsnorm(h, w_name, tag):
        sq = node("Pow", [h, init(f"{tag}.two", np.float32(2.0))], f"{tag}/Pow")
        var = node("ReduceMean", [sq, const(f"{tag}.axes", [-1])], f"{tag}/ReduceMean",
                   keepdims=1)
        shifted = node("Add", [var, init(f"{tag}.eps", np.float32(eps))], f"{tag}/Add")
        root = node("Sqrt", [shifted], f"{tag}/Sqrt")
        inv = node("Div", [init(f"{tag}.one", np.float32(1.0)), root], f"{tag}/Div")
        normed = node("Mul", [h, inv], f"{tag}/Mul")
        return node("Mul", [init(w_name, (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)),
                            normed], f"{tag}/Mul_1")

    n1 = rmsnorm(x, "model.layers.0.input_layernorm.weight", "input_layernorm")
    q = node("MatMul", [n1, weight("q_proj.weight", d, heads * head_dim)], "self_attn/q_proj/MatMul")
    k = node("MatMul", [n1, weight("k_proj.weight", d, kv_heads * head_dim)], "self_attn/k_proj/MatMul")
    v = node("MatMul", [n1, weight("v_proj.weight", d, kv_heads * head_dim)], "self_attn/v_proj/MatMul")
    perm = [0, 2, 1, 3]
    q = node("Transpose", [node("Reshape", [q, q_shape], "self_attn/Reshape")],
             "self_attn/Transpose", perm=perm)
    k = node("Transpose", [node("Reshape", [k, kv_shape], "self_attn/Reshape_1")],
             "self_attn/Transpose_1", perm=perm)
    v = node("Transpose", [node("Reshape", [v, kv_shape], "self_attn/Reshape_2")],
             "self_attn/Transpose_2", perm=perm)

    # rotary embedding: freqs = inv_freq[None, :, None] @ positions[:, None, :]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    inv = node("Unsqueeze", [init("rotary_emb.inv_freq", inv_freq.astype(np.float32)),
                             const("axes02", [0, 2])], "rotary_emb/Unsqueeze")
    inv_shape = node("Concat", [batch_u, const("half", [head_dim // 2]), const("one1", [1])],
                     "rotary_emb/Concat", axis=0)
    inv = node("Expand", [inv, inv_shape], "rotary_emb/Expand")
    positions = node("Cast", [node("Unsqueeze", [pos, const("axes1", [1])],
                                   "rotary_emb/Unsqueeze_1")], "rotary_emb/Cast",
                     to=TensorProto.FLOAT)
    freqs = node("Transpose", [node("MatMul", [inv, positions], "rotary_emb/MatMul")],
                 "rotary_emb/Transpose", perm=[0, 2, 1])
    emb = node("Concat", [freqs, freqs], "rotary_emb/Concat_1", axis=-1)
    cos = node("Unsqueeze", [node("Cos", [emb], "rotary_emb/Cos"), const("axes1b", [1])],
               "Unsqueeze_cos")
    sin = node("Unsqueeze", [node("Sin", [emb], "rotary_emb/Sin"), const("axes1c", [1])],
               "Unsqueeze_sin")

    def rotate(t, tag):
        lo = node("Slice", [t, const(f"{tag}.s0", [0]), const(f"{tag}.e0", [head_dim // 2]),
                            const(f"{tag}.a0", [3])], f"{tag}/Slice")
        hi = node("Slice", [t, const(f"{tag}.s1", [head_dim // 2]),
                            const(f"{tag}.e1", [2**63 - 1]), const(f"{tag}.a1", [3])],
                  f"{tag}/Slice_1")
        half = node("Concat", [node("Neg", [hi], f"{tag}/Neg"), lo], f"{tag}/Concat", axis=-1)
        return node("Add", [node("Mul", [t, cos], f"{tag}/Mul"),
                            node("Mul", [half, sin], f"{tag}/Mul_1")], f"{tag}/Add")

    q = rotate(q, "rope_q")
    k = rotate(k, "rope_k")

    def repeat_kv(t, tag):
        expanded = node("Unsqueeze", [t, const(f"{tag}.ax", [2])], f"{tag}/Unsqueeze")
        target = node("Concat", [batch_u, const(f"{tag}.kvh", [kv_heads]), const(f"{tag}.g", [group]),
                                 seq_u, const(f"{tag}.hd", [head_dim])], f"{tag}/Concat", axis=0)
        expanded = node("Expand", [expanded, target], f"{tag}/Expand")
        merged = node("Concat", [batch_u, const(f"{tag}.h", [heads]), seq_u,
                                 const(f"{tag}.hd2", [head_dim])], f"{tag}/Concat_1", axis=0)
        return node("Reshape", [expanded, merged], f"{tag}/Reshape")

    k = repeat_kv(k, "repeat_k")
    v = repeat_kv(v, "repeat_v")
    kt = node("Transpose", [k], "self_attn/Transpose_3", perm=[0, 1, 3, 2])
    scores = node("MatMul", [q, kt], "self_attn/MatMul")
    scores = node("Mul", [scores, init("scale", np.float32(1.0 / np.sqrt(head_dim)))],
                  "self_attn/Mul")
    rows = node("Range", [const("r0", 0), seq, const("r1", 1)], "mask/Range")
    causal = node("GreaterOrEqual", [node("Unsqueeze", [rows, const("ax_r", [1])], "mask/Unsqueeze"),
                                     node("Unsqueeze", [rows, const("ax_c", [0])], "mask/Unsqueeze_1")],
                  "mask/GreaterOrEqual")
    if additive_mask:
        bias = node("Where", [causal, init("zero", np.float32(0.0)),
                              init("neg_inf", np.float32(-np.inf))], "mask/Where")
        masked = node("Add", [scores, bias], "self_attn/Add")
    else:
        masked = node("Where", [causal, scores, init("neg_inf", np.float32(-np.inf))],
                      "self_attn/Where")
    probs = node("Softmax", [masked], "self_attn/Softmax", axis=-1)
    attn = node("MatMul", [probs, v], "self_attn/MatMul_1")
    attn = node("Transpose", [attn], "self_attn/Transpose_4", perm=perm)
    merged = node("Concat", [batch_u, seq_u, const("m1", [-1])], "self_attn/Concat_2", axis=0)
    attn = node("Reshape", [attn, merged], "self_attn/Reshape_3")
    attn = node("MatMul", [attn, weight("o_proj.weight", heads * head_dim, d)],
                "self_attn/o_proj/MatMul")
    h = node("Add", [x, attn], "Add")

    n2 = rmsnorm(h, "model.layers.0.post_attention_layernorm.weight", "post_attention_layernorm")
    gate = node("MatMul", [n2, weight("gate_proj.weight", d, ffn)], "mlp/gate_proj/MatMul")
    up = node("MatMul", [n2, weight("up_proj.weight", d, ffn)], "mlp/up_proj/MatMul")
    act = node("Mul", [gate, node("Sigmoid", [gate], "mlp/act_fn/Sigmoid")], "mlp/act_fn/Mul")
    down = node("MatMul", [node("Mul", [act, up], "mlp/Mul"), weight("down_proj.weight", ffn, d)],
                "mlp/down_proj/MatMul")
    nodes.append(helper.make_node("Add", [h, down], ["last_hidden_state"],
                                  name="/model/layers.0/Add_1"))
    dims = list(static) if static else ["batch_size", "sequence_length"]
    graph = helper.make_graph(
        nodes, "decoder_block",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, dims + [d]),
         helper.make_tensor_value_info(pos, TensorProto.INT64, dims)],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [d])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def small_cnn(seed=0):
    """A ResNet-style stem and block as exporters write a CNN: Conv (+bias), BatchNormalization,
    Relu, MaxPool with padding, a residual Add, GlobalAveragePool, Flatten and Gemm (transB)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def bn(tag, c):
        return [init(f"{tag}.weight", 1 + 0.1 * rng.standard_normal(c)),
                init(f"{tag}.bias", 0.1 * rng.standard_normal(c)),
                init(f"{tag}.running_mean", 0.1 * rng.standard_normal(c)),
                init(f"{tag}.running_var", 1 + 0.1 * rng.random(c))]

    n = helper.make_node
    nodes = [
        n("Conv", ["input", init("conv1.weight", 0.2 * rng.standard_normal((8, 3, 3, 3))),
                   init("conv1.bias", 0.1 * rng.standard_normal(8))], ["c1"], name="/conv1/Conv",
          kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", *bn("bn1", 8)], ["b1"], name="/bn1/BatchNormalization",
          epsilon=1e-5),
        n("Relu", ["b1"], ["r1"], name="/relu/Relu"),
        n("MaxPool", ["r1"], ["p1"], name="/maxpool/MaxPool", kernel_shape=[3, 3],
          strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Conv", ["p1", init("layer1.conv.weight", 0.2 * rng.standard_normal((8, 8, 3, 3)))],
          ["c2"], name="/layer1/conv/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c2", *bn("layer1.bn", 8)], ["b2"],
          name="/layer1/bn/BatchNormalization"),
        n("Add", ["b2", "p1"], ["a2"], name="/layer1/Add"),
        n("Relu", ["a2"], ["r2"], name="/layer1/relu/Relu"),
        n("GlobalAveragePool", ["r2"], ["g"], name="/avgpool/GlobalAveragePool"),
        n("Flatten", ["g"], ["f"], name="/Flatten", axis=1),
        n("Gemm", ["f", init("fc.weight", 0.3 * rng.standard_normal((10, 8))),
                   init("fc.bias", 0.1 * rng.standard_normal(10))], ["logits"], name="/fc/Gemm",
          alpha=1.0, beta=1.0, transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
