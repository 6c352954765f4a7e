#!/usr/bin/python3
"""Golden fixtures for the layer kernels (tests/check_layers.c), made with PyTorch.

Run by hand (Debian's python3-torch, float32, fixed seeds):
    /usr/bin/python3 tests/gen_fixtures.py nn
Each tensor is a raw little-endian float32 file tests/fixtures/nn_<layer>_<name>.f32
(no header; check_layers.c asserts the byte size).  Integer labels are stored as
float32 too.  Shapes (row-major):

  linear     N=5 Din=7 Dout=6:  x [5,7] w [6,7] b [6] y [5,6] dy [5,6]
                                dx [5,7] dw [6,7] db [6]
  layernorm  N=4 D=10 eps 1e-6: x [4,10] w [10] b [10] y [4,10] dy [4,10]
                                dx [4,10] dw [10] db [10]
  gelu       n=64 (exact erf):  x [64] y [64] dy [64] dx [64]
  attention  B=2 T=5 D=12 H=3:  qkv [2,5,36] out [2,5,12] dout [2,5,12] dqkv [2,5,36]
  patch2d    B=2 Hi=9 Wi=12 C=3 P=4 D=5 (grid 2x3, the last row dropped):
             x [2,9,12,3] w [5,3,4,4] b [5] y [2,6,5] dy [2,6,5] dw [5,3,4,4] db [5]
  patch3d    B=2 Dz=4 Hi=4 Wi=6 C=2 P=2 D=4 (grid 2x2x3):
             x [2,4,4,6,2] w [4,2,2,2,2] b [4] y [2,12,4] dy [2,12,4] dw [4,2,2,2,2] db [4]
  embed      B=2 N=4 D=6:       patch [2,4,6] cls [6] pos [5,6] x [2,5,6] dx [2,5,6]
                                dpatch [2,4,6] dcls [6] dpos [5,6]
  resample   1 prefix, grid 4x4, D=3: in [17,3];
             bilinear_up [1+6*5,3] bicubic_up [1+6*5,3] (to 6x5),
             bilinear_down [1+3*2,3] bicubic_down [1+3*2,3] (to 3x2),
             and the same with antialias=True: bilinear_aa_up, ..., bicubic_aa_down
  xent       B=4 K=7 smoothing 0.1: logits [4,7] labels [4] loss [1] dlogits [4,7]
             ncorrect [1]
  l1, mse    n=6: pred [6] target [6] loss [1] dpred [6]  (pred[2] == target[2])
"""
import os

import numpy as np
import torch
import torch.nn.functional as F


def save(outdir, name, t):
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    a = np.ascontiguousarray(a, dtype="<f4")
    with open(os.path.join(outdir, "nn_%s.f32" % name), "wb") as f:
        f.write(a.tobytes())


def rnd(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).float()


def leaf(t):
    return t.clone().requires_grad_(True)


def main(outdir):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(20261123)

    # linear
    x, w, b = leaf(rnd(g, 5, 7)), leaf(rnd(g, 6, 7, scale=0.3)), leaf(rnd(g, 6))
    y = F.linear(x, w, b)
    dy = rnd(g, 5, 6)
    y.backward(dy)
    for n, t in [("x", x), ("w", w), ("b", b), ("y", y), ("dy", dy), ("dx", x.grad),
                 ("dw", w.grad), ("db", b.grad)]:
        save(outdir, "linear_" + n, t)

    # layernorm
    x = leaf(rnd(g, 4, 10, scale=2.0) + 0.5)
    w, b = leaf(1.0 + rnd(g, 10, scale=0.2)), leaf(rnd(g, 10, scale=0.2))
    y = F.layer_norm(x, (10,), w, b, eps=1e-6)
    dy = rnd(g, 4, 10)
    y.backward(dy)
    for n, t in [("x", x), ("w", w), ("b", b), ("y", y), ("dy", dy), ("dx", x.grad),
                 ("dw", w.grad), ("db", b.grad)]:
        save(outdir, "layernorm_" + n, t)

    # gelu
    x = leaf(torch.linspace(-5, 5, 64) + rnd(g, 64, scale=0.01))
    y = F.gelu(x)  # approximate='none': the erf form
    dy = rnd(g, 64)
    y.backward(dy)
    for n, t in [("x", x), ("y", y), ("dy", dy), ("dx", x.grad)]:
        save(outdir, "gelu_" + n, t)

    # attention core, as timm's Attention.forward between qkv and proj
    B, T, D, H = 2, 5, 12, 3
    hd = D // H
    qkv = leaf(rnd(g, B, T, 3 * D))
    q, k, v = qkv.reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
    att = (q @ k.transpose(-2, -1)) * hd ** -0.5
    att = att.softmax(dim=-1)
    out = (att @ v).transpose(1, 2).reshape(B, T, D)
    dout = rnd(g, B, T, D)
    out.backward(dout)
    for n, t in [("qkv", qkv), ("out", out), ("dout", dout), ("dqkv", qkv.grad)]:
        save(outdir, "attention_" + n, t)

    # patch embedding 2-D (channels-last input, PyTorch Conv2d weight)
    x = rnd(g, 2, 9, 12, 3)
    w, b = leaf(rnd(g, 5, 3, 4, 4, scale=0.2)), leaf(rnd(g, 5))
    y = F.conv2d(x.permute(0, 3, 1, 2), w, b, stride=4).flatten(2).transpose(1, 2)
    dy = rnd(g, *y.shape)
    y.backward(dy)
    for n, t in [("x", x), ("w", w), ("b", b), ("y", y), ("dy", dy), ("dw", w.grad),
                 ("db", b.grad)]:
        save(outdir, "patch2d_" + n, t)

    # patch embedding 3-D
    x = rnd(g, 2, 4, 4, 6, 2)
    w, b = leaf(rnd(g, 4, 2, 2, 2, 2, scale=0.3)), leaf(rnd(g, 4))
    y = F.conv3d(x.permute(0, 4, 1, 2, 3), w, b, stride=2).flatten(2).transpose(1, 2)
    dy = rnd(g, *y.shape)
    y.backward(dy)
    for n, t in [("x", x), ("w", w), ("b", b), ("y", y), ("dy", dy), ("dw", w.grad),
                 ("db", b.grad)]:
        save(outdir, "patch3d_" + n, t)

    # class token + position embedding
    patch, cls, pos = leaf(rnd(g, 2, 4, 6)), leaf(rnd(g, 1, 1, 6)), leaf(rnd(g, 1, 5, 6))
    x = torch.cat([cls.expand(2, -1, -1), patch], dim=1) + pos
    dx = rnd(g, 2, 5, 6)
    x.backward(dx)
    for n, t in [("patch", patch), ("cls", cls), ("pos", pos), ("x", x), ("dx", dx),
                 ("dpatch", patch.grad), ("dcls", cls.grad), ("dpos", pos.grad)]:
        save(outdir, "embed_" + n, t)

    # position-embedding resampling (timm's resample_abs_pos_embed with antialias=False)
    pe = rnd(g, 1, 17, 3)
    save(outdir, "resample_in", pe)
    grid = pe[:, 1:].reshape(1, 4, 4, 3).permute(0, 3, 1, 2)
    for mode in ("bilinear", "bicubic"):
        for aa in (False, True):
            for tag, size in (("up", (6, 5)), ("down", (3, 2))):
                r = F.interpolate(grid, size=size, mode=mode, align_corners=False, antialias=aa)
                r = r.permute(0, 2, 3, 1).reshape(1, -1, 3)
                save(outdir, "resample_%s%s_%s" % (mode, "_aa" if aa else "", tag),
                     torch.cat([pe[:, :1], r], dim=1))

    # cross-entropy with label smoothing
    logits = leaf(rnd(g, 4, 7, scale=2.0))
    labels = torch.tensor([3, 0, 6, 2])
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
    loss.backward()
    ncorrect = (logits.argmax(dim=1) == labels).sum().float()
    for n, t in [("logits", logits), ("labels", labels.float()), ("loss", loss.reshape(1)),
                 ("dlogits", logits.grad), ("ncorrect", ncorrect.reshape(1))]:
        save(outdir, "xent_" + n, t)

    # regression losses
    for name, fn in (("l1", F.l1_loss), ("mse", F.mse_loss)):
        pred, target = leaf(rnd(g, 6)), rnd(g, 6)
        target[2] = pred.detach()[2]
        loss = fn(pred, target)
        loss.backward()
        for n, t in [("pred", pred), ("target", target), ("loss", loss.reshape(1)),
                     ("dpred", pred.grad)]:
            save(outdir, name + "_" + n, t)


if __name__ == "__main__":
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
