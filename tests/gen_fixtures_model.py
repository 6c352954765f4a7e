"""Fixtures of the model area (tests/check_model.c): golden values from PyTorch.

A tiny timm-style ViT (written out here in plain torch, computed in float64) with
fixed random weights and inputs.  For each case NAME the files are raw little-endian:
  model_NAME_params.f32   every parameter, in the C model's registry order
                          (timm's state_dict order: cls_token, pos_embed,
                          patch_embed.proj.{weight,bias}, blocks.i.*, norm.*, head.*)
  model_NAME_input.u8 / .f32   the batch, channels-last [B, H, W, C] / [B, Z, H, W, C]
  model_NAME_targets.i32 / .f32   labels / regression targets [B]
  model_NAME_logits.f32   [B, K]
  model_NAME_loss.f32     [1]
  model_NAME_grads.f32    d loss / d param, same order as params
Checkpoint fixtures (same weights as tiny2d):
  model_tiny2d_timm.safetensors   bare timm names (a plain ViT), F32, written by the rules
                                  of METHOD.md (Python's safetensors is not in Debian)
  model_tiny2d_google.npz         Google's ViT layout (Transformer/encoderblock_N/...)
  model_tiny2d_pos3x3.f32         pos_embed resampled to a 3x3 grid, bilinear,
                                  align_corners=False (torch.nn.functional.interpolate)
Run by hand: /usr/bin/python3 tests/gen_fixtures.py model
"""
import json
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

CASES = {
    # 2-D classifier: 8x8x3 images, patch 4 (N 4, T 5), D 16, depth 2, 2 heads, 5 classes
    "tiny2d": dict(ndim=2, img=(8, 8), C=3, P=4, D=16, depth=2, H=2, M=64, K=5, B=3,
                   task="classify", smoothing=0.1,
                   mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    # 3-D regression: 8x8x8x1 volumes, patch 4 (N 8, T 9), D 12, depth 2, 3 heads, 1 output
    "tiny3d": dict(ndim=3, img=(8, 8, 8), C=1, P=4, D=12, depth=2, H=3, M=24, K=1, B=2,
                   task="regress", smoothing=0.0, mean=(0.3,), std=(1.7,)),
}


def param_specs(c):
    D, M, K, C, P = c["D"], c["M"], c["K"], c["C"], c["P"]
    N = int(np.prod([s // P for s in c["img"]]))
    out = [("cls_token", (1, 1, D)), ("pos_embed", (1, N + 1, D)),
           ("patch_embed.proj.weight", (D, C) + (P,) * c["ndim"]),
           ("patch_embed.proj.bias", (D,))]
    for i in range(c["depth"]):
        b = "blocks.%d." % i
        out += [(b + "norm1.weight", (D,)), (b + "norm1.bias", (D,)),
                (b + "attn.qkv.weight", (3 * D, D)), (b + "attn.qkv.bias", (3 * D,)),
                (b + "attn.proj.weight", (D, D)), (b + "attn.proj.bias", (D,)),
                (b + "norm2.weight", (D,)), (b + "norm2.bias", (D,)),
                (b + "mlp.fc1.weight", (M, D)), (b + "mlp.fc1.bias", (M,)),
                (b + "mlp.fc2.weight", (D, M)), (b + "mlp.fc2.bias", (D,))]
    out += [("norm.weight", (D,)), ("norm.bias", (D,)), ("head.weight", (K, D)),
            ("head.bias", (K,))]
    return out


def make_params(c, rng):
    ps = {}
    for name, shape in param_specs(c):
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "cls_token" or name == "pos_embed":
            v = 0.5 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 4
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
        ps[name] = torch.tensor(v.astype(np.float32), dtype=torch.float64, requires_grad=True)
    return ps


def forward(c, ps, x):
    """x: normalised input, channels-last float64."""
    D, H, P = c["D"], c["H"], c["P"]
    B = x.shape[0]
    if c["ndim"] == 2:
        t = F.conv2d(x.permute(0, 3, 1, 2), ps["patch_embed.proj.weight"],
                     ps["patch_embed.proj.bias"], stride=P)
    else:
        t = F.conv3d(x.permute(0, 4, 1, 2, 3), ps["patch_embed.proj.weight"],
                     ps["patch_embed.proj.bias"], stride=P)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([ps["cls_token"].expand(B, -1, -1), t], dim=1) + ps["pos_embed"]
    T = t.shape[1]
    hd = D // H
    for i in range(c["depth"]):
        b = "blocks.%d." % i
        h = F.layer_norm(t, (D,), ps[b + "norm1.weight"], ps[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, ps[b + "attn.qkv.weight"], ps[b + "attn.qkv.bias"])
        qkv = qkv.reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * hd ** -0.5
        a = a.softmax(dim=-1)
        o = (a @ v).transpose(1, 2).reshape(B, T, D)
        t = t + F.linear(o, ps[b + "attn.proj.weight"], ps[b + "attn.proj.bias"])
        h = F.layer_norm(t, (D,), ps[b + "norm2.weight"], ps[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, ps[b + "mlp.fc1.weight"], ps[b + "mlp.fc1.bias"])),
                     ps[b + "mlp.fc2.weight"], ps[b + "mlp.fc2.bias"])
        t = t + h
    t = F.layer_norm(t, (D,), ps["norm.weight"], ps["norm.bias"], eps=1e-6)
    return F.linear(t[:, 0], ps["head.weight"], ps["head.bias"])


def save(path, arr, dtype):
    np.ascontiguousarray(arr, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).tofile(path)


def gen_case(outdir, name, c, seed):
    rng = np.random.default_rng(seed)
    ps = make_params(c, rng)
    B, C = c["B"], c["C"]
    shape = (B,) + tuple(c["img"]) + (C,)
    mean = torch.tensor(c["mean"], dtype=torch.float64)
    std = torch.tensor(c["std"], dtype=torch.float64)
    if c["ndim"] == 2:
        raw = rng.integers(0, 256, size=shape, dtype=np.uint8)
        save(os.path.join(outdir, "model_%s_input.u8" % name), raw, np.uint8)
        # as the C code: float32 (p / 255 - mean) / std
        x32 = (raw.astype(np.float32) / np.float32(255.0) - np.array(c["mean"], np.float32)) \
            / np.array(c["std"], np.float32)
    else:
        raw = rng.standard_normal(shape).astype(np.float32)
        save(os.path.join(outdir, "model_%s_input.f32" % name), raw, np.float32)
        x32 = (raw - np.array(c["mean"], np.float32)) / np.array(c["std"], np.float32)
    x = torch.tensor(x32.astype(np.float32), dtype=torch.float64)
    logits = forward(c, ps, x)
    if c["task"] == "classify":
        labels = rng.integers(0, c["K"], size=B).astype(np.int32)
        save(os.path.join(outdir, "model_%s_targets.i32" % name), labels, np.int32)
        loss = F.cross_entropy(logits, torch.tensor(labels, dtype=torch.long),
                               label_smoothing=c["smoothing"])
    else:
        targets = rng.standard_normal(B).astype(np.float32)
        save(os.path.join(outdir, "model_%s_targets.f32" % name), targets, np.float32)
        loss = F.l1_loss(logits[:, 0], torch.tensor(targets, dtype=torch.float64))
    loss.backward()
    specs = param_specs(c)
    save(os.path.join(outdir, "model_%s_params.f32" % name),
         np.concatenate([ps[n].detach().numpy().ravel() for n, _ in specs]), np.float32)
    save(os.path.join(outdir, "model_%s_grads.f32" % name),
         np.concatenate([ps[n].grad.numpy().ravel() for n, _ in specs]), np.float32)
    save(os.path.join(outdir, "model_%s_logits.f32" % name), logits.detach().numpy(),
         np.float32)
    save(os.path.join(outdir, "model_%s_loss.f32" % name),
         np.array([loss.item()]), np.float32)
    return ps, x, logits


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> float32 numpy array (all F32, so sorted by name)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = dict(sorted(metadata.items()))
    off = 0
    names = sorted(tensors)
    for n in names:
        nb = tensors[n].astype("<f4").nbytes
        header[n] = {"dtype": "F32", "shape": list(tensors[n].shape),
                     "data_offsets": [off, off + nb]}
        off += nb
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for n in names:
            f.write(np.ascontiguousarray(tensors[n], dtype="<f4").tobytes())


def google_layout(c, ps):
    """timm's _load_weights in reverse: torch layout -> Google's ViT .npz names."""
    D, H = c["D"], c["H"]
    hd = D // H
    g = lambda n: ps[n].detach().numpy().astype(np.float32)
    out = {"cls": g("cls_token"),
           "Transformer/posembed_input/pos_embedding": g("pos_embed"),
           "embedding/kernel": g("patch_embed.proj.weight").transpose(2, 3, 1, 0),
           "embedding/bias": g("patch_embed.proj.bias"),
           "Transformer/encoder_norm/scale": g("norm.weight"),
           "Transformer/encoder_norm/bias": g("norm.bias"),
           "head/kernel": g("head.weight").T,
           "head/bias": g("head.bias")}
    for i in range(c["depth"]):
        b, p = "blocks.%d." % i, "Transformer/encoderblock_%d/" % i
        a = p + "MultiHeadDotProductAttention_1/"
        out[p + "LayerNorm_0/scale"] = g(b + "norm1.weight")
        out[p + "LayerNorm_0/bias"] = g(b + "norm1.bias")
        out[p + "LayerNorm_2/scale"] = g(b + "norm2.weight")
        out[p + "LayerNorm_2/bias"] = g(b + "norm2.bias")
        w, bias = g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias")
        for k, nm in enumerate(["query", "key", "value"]):
            out[a + nm + "/kernel"] = w[k * D:(k + 1) * D].T.reshape(D, H, hd)
            out[a + nm + "/bias"] = bias[k * D:(k + 1) * D].reshape(H, hd)
        out[a + "out/kernel"] = g(b + "attn.proj.weight").T.reshape(H, hd, D)
        out[a + "out/bias"] = g(b + "attn.proj.bias")
        out[p + "MlpBlock_3/Dense_0/kernel"] = g(b + "mlp.fc1.weight").T
        out[p + "MlpBlock_3/Dense_0/bias"] = g(b + "mlp.fc1.bias")
        out[p + "MlpBlock_3/Dense_1/kernel"] = g(b + "mlp.fc2.weight").T
        out[p + "MlpBlock_3/Dense_1/bias"] = g(b + "mlp.fc2.bias")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def main(outdir):
    torch.manual_seed(0)
    params = {}
    for i, (name, c) in enumerate(sorted(CASES.items())):
        params[name] = gen_case(outdir, name, c, 1234 + i)[0]
    c, ps = CASES["tiny2d"], params["tiny2d"]
    write_safetensors(os.path.join(outdir, "model_tiny2d_timm.safetensors"),
                      {n: ps[n].detach().numpy().astype(np.float32) for n, _ in param_specs(c)},
                      {"format": "pt"})
    np.savez(os.path.join(outdir, "model_tiny2d_google.npz"), **google_layout(c, ps))
    pos = ps["pos_embed"].detach().to(torch.float32)
    grid = pos[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(3, 3), mode="bilinear", align_corners=False)
    new = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 9, -1)], dim=1)
    save(os.path.join(outdir, "model_tiny2d_pos3x3.f32"), new.numpy(), np.float32)


if __name__ == "__main__":
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
