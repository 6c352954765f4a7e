"""Fixtures of the MoE branch (tests/fixtures/moe_*.bin), made with PyTorch.

The reference EMoE router and branch are written here from METHOD.md section 2
(they follow Belis0811/EMoE's EigenRouter and MoEAdapterBranch): QR retraction
of Q and P under no_grad before a training forward, energy, masks softmax over
experts, gamma, bias, tau, top-k with raw probabilities as weights (k = 0: soft),
experts up(GELU(down(h))) without biases, h + alpha * sum, and the orthonormality
loss lambda (||Q^T Q - I||^2 + ||P^T P - I||^2).  The class token passes unchanged.

Each case is one file of records: magic b"EMOEFIX1", u32 count, then per record
u32 name length, name (UTF-8), u32 ndim, u32 dims[ndim], float32 data (all
little-endian).  Records: "cfg" [9] = (E, r, F, top_k, tau, alpha, lambda_ortho,
train, patches_only), "x" [B, T, D], "R" [B, T, D] (the loss is sum(y * R) + extra),
"param/<name>" (before the forward), "y", "top1" [B, T-1] (float), "extra" [],
"Q_after", "P_after", "dx", "grad/<name>".
"""
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F


def write_records(path, recs):
    with open(path, "wb") as f:
        f.write(b"EMOEFIX1")
        f.write(struct.pack("<I", len(recs)))
        for name, arr in recs:
            a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
            nb = name.encode()
            f.write(struct.pack("<I", len(nb)))
            f.write(nb)
            f.write(struct.pack("<I", a.ndim))
            for d in a.shape:
                f.write(struct.pack("<I", d))
            f.write(a.tobytes())


def branch_forward(params, x, E, r, top_k, tau, train, patches_only):
    """The reference forward; returns y, top1 [B, Tr], extra (without lambda)."""
    Q, P = params["router.basis.Q"], params["router.basis.P"]
    if train:
        with torch.no_grad():
            Q.copy_(torch.linalg.qr(Q, mode="reduced").Q)
            P.copy_(torch.linalg.qr(P, mode="reduced").Q)
    if patches_only:
        cls_tok, h = x[:, :1, :], x[:, 1:, :]
    else:
        h = x
    z = torch.einsum("dr,btd->btr", Q, h)
    e = z.pow(2)
    e = e / (e.sum(dim=-1, keepdim=True) + 1e-6)
    m = torch.softmax(params["router.masks"], dim=0)
    logits = torch.einsum("btr,r,er->bte", e, params["router.gamma"], m) + params["router.bias"]
    probs = F.softmax(logits / tau, dim=-1)
    eye = torch.eye(r, dtype=Q.dtype)
    ortho = (Q.T @ Q - eye).pow(2).sum() + (P.T @ P - eye).pow(2).sum()

    def expert(i, t):
        d = params["experts.%d.down.weight" % i]
        u = params["experts.%d.up.weight" % i]
        return F.gelu(t @ d.T) @ u.T

    if top_k == 0 or top_k >= E:
        out = 0.0
        for i in range(E):
            out = out + probs[..., i].unsqueeze(-1) * expert(i, h)
        top1 = probs.argmax(dim=-1)
    else:
        vals, idx = torch.topk(probs, k=top_k, dim=-1)
        out = torch.zeros_like(h)
        for kk in range(top_k):
            ek = idx[..., kk]
            wk = vals[..., kk].unsqueeze(-1)
            for i in range(E):
                mask = (ek == i).unsqueeze(-1)
                if mask.any():
                    out = out + mask * wk * expert(i, h)
        top1 = idx[..., 0]
        # the C side breaks ties by the lowest index; make sure there are none
        s = torch.sort(probs, dim=-1, descending=True).values
        gap = (s[..., top_k - 1] - s[..., top_k]).min().item()
        assert gap > 1e-4, "near tie in the fixture (gap %g)" % gap
    y = h + params["alpha"] * out
    if patches_only:
        y = torch.cat([cls_tok, y], dim=1)
    return y, top1, ortho


def make_case(path, seed, top_k, train, patches_only=1, B=3, T=9, D=16, r=6, E=4, Fb=12,
              tau=0.7, alpha=0.8, lam=0.05):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    params = {}
    params["alpha"] = torch.tensor(alpha, dtype=torch.float32)
    params["router.gamma"] = torch.tensor(1.0 + 0.2 * rng.standard_normal(r), dtype=torch.float32)
    params["router.masks"] = torch.tensor(rng.standard_normal((E, r)), dtype=torch.float32)
    params["router.bias"] = torch.tensor(0.1 * rng.standard_normal(E), dtype=torch.float32)
    for name in ("router.basis.Q", "router.basis.P"):
        q, _ = np.linalg.qr(rng.standard_normal((D, r)))
        q = q + 0.05 * rng.standard_normal((D, r))  # not orthonormal: retraction matters
        params[name] = torch.tensor(q, dtype=torch.float32)
    params["router.basis.log_lambda"] = torch.tensor(0.1 * rng.standard_normal(r),
                                                     dtype=torch.float32)
    for i in range(E):
        b = 1.0 / np.sqrt(D)
        params["experts.%d.down.weight" % i] = torch.tensor(
            rng.uniform(-b, b, (Fb, D)), dtype=torch.float32)
    for i in range(E):
        b = 1.0 / np.sqrt(Fb)
        params["experts.%d.up.weight" % i] = torch.tensor(
            rng.uniform(-b, b, (D, Fb)), dtype=torch.float32)
    x = torch.tensor(rng.standard_normal((B, T, D)), dtype=torch.float32)
    R = torch.tensor(rng.standard_normal((B, T, D)), dtype=torch.float32)
    before = {k: v.clone() for k, v in params.items()}
    for v in params.values():
        v.requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    y, top1, ortho = branch_forward(params, xg, E, r, top_k, tau, train, patches_only)
    extra = lam * ortho
    loss = (y * R).sum() + extra
    loss.backward()
    recs = [("cfg", [E, r, Fb, top_k, tau, alpha, lam, 1.0 if train else 0.0, patches_only]),
            ("x", x.numpy()), ("R", R.numpy())]
    for k, v in before.items():
        recs.append(("param/" + k, v.numpy()))
    recs += [("y", y.detach().numpy()), ("top1", top1.numpy().astype(np.float32)),
             ("extra", np.array(extra.item(), dtype=np.float32)),
             ("Q_after", params["router.basis.Q"].detach().numpy()),
             ("P_after", params["router.basis.P"].detach().numpy()),
             ("dx", xg.grad.numpy())]
    for k, v in params.items():
        g = v.grad if v.grad is not None else torch.zeros_like(v)
        recs.append(("grad/" + k, g.numpy()))
    write_records(path, recs)


# ---------------------------------------------------------------------------
# A reference-named state_dict of a whole EigenMoE (tiny ViT + branches after
# blocks 0 and 1), written as .safetensors without metadata (as a reference
# state_dict converted with safetensors.torch.save_file would be), with a batch of
# images and the logits of the reference forward in evaluation mode (no
# retraction), in float64.  Records of moe_state_eigen.bin: "images" [B, 8, 8, 3]
# (pixel values 0..255), "logits" [B, K], "top1_0", "top1_1" [B, N].

def write_safetensors(path, tensors):
    import json
    names = sorted(tensors)
    header, off, blobs = {}, 0, []
    for n in names:
        a = np.ascontiguousarray(tensors[n], dtype="<f4")
        b = a.tobytes()
        header[n] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_state(outdir, seed=31):
    import gen_fixtures_model as gm
    c = dict(gm.CASES["tiny2d"])
    E, r, Fb, blocks = 3, 4, 8, (0, 1)
    D, H, P, B, K = c["D"], c["H"], c["P"], c["B"], c["K"]
    rng = np.random.default_rng(seed)
    ps = gm.make_params(c, rng)
    br = {}
    for i in blocks:
        pre = "branches.%d." % i
        br[pre + "alpha"] = np.array(0.9 + 0.2 * rng.standard_normal(), dtype=np.float32)
        br[pre + "router.gamma"] = (1.0 + 0.3 * rng.standard_normal(r)).astype(np.float32)
        br[pre + "router.masks"] = rng.standard_normal((E, r)).astype(np.float32)
        br[pre + "router.bias"] = (0.2 * rng.standard_normal(E)).astype(np.float32)
        for n in ("Q", "P"):
            q, _ = np.linalg.qr(rng.standard_normal((D, r)))
            br[pre + "router.basis." + n] = q.astype(np.float32)
        br[pre + "router.basis.log_lambda"] = np.zeros(r, np.float32)
        for e in range(E):
            br[pre + "experts.%d.down.weight" % e] = rng.uniform(
                -D ** -0.5, D ** -0.5, (Fb, D)).astype(np.float32)
            br[pre + "experts.%d.up.weight" % e] = rng.uniform(
                -Fb ** -0.5, Fb ** -0.5, (D, Fb)).astype(np.float32)
    raw = rng.integers(0, 256, size=(B,) + tuple(c["img"]) + (c["C"],), dtype=np.uint8)
    x32 = (raw.astype(np.float32) / np.float32(255.0) - np.array(c["mean"], np.float32)) \
        / np.array(c["std"], np.float32)
    x = torch.tensor(x32, dtype=torch.float64)
    t64 = {k: torch.tensor(v, dtype=torch.float64) for k, v in br.items()}
    # the backbone of gen_fixtures_model with the branches after the blocks
    t = F.conv2d(x.permute(0, 3, 1, 2), ps["patch_embed.proj.weight"],
                 ps["patch_embed.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    t = torch.cat([ps["cls_token"].expand(B, -1, -1), t], dim=1) + ps["pos_embed"]
    T = t.shape[1]
    hd = D // H
    top1s = []
    with torch.no_grad():
        for i in range(c["depth"]):
            b = "blocks.%d." % i
            h = F.layer_norm(t, (D,), ps[b + "norm1.weight"], ps[b + "norm1.bias"], eps=1e-6)
            qkv = F.linear(h, ps[b + "attn.qkv.weight"], ps[b + "attn.qkv.bias"])
            qkv = qkv.reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
            a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * hd ** -0.5).softmax(dim=-1)
            o = (a @ qkv[2]).transpose(1, 2).reshape(B, T, D)
            t = t + F.linear(o, ps[b + "attn.proj.weight"], ps[b + "attn.proj.bias"])
            h = F.layer_norm(t, (D,), ps[b + "norm2.weight"], ps[b + "norm2.bias"], eps=1e-6)
            t = t + F.linear(F.gelu(F.linear(h, ps[b + "mlp.fc1.weight"], ps[b + "mlp.fc1.bias"])),
                             ps[b + "mlp.fc2.weight"], ps[b + "mlp.fc2.bias"])
            if i in blocks:
                pre = "branches.%d." % i
                sub = {k[len(pre):]: v for k, v in t64.items() if k.startswith(pre)}
                t, top1, _ = branch_forward(sub, t, E, r, 1, 1.0, False, 1)
                top1s.append(top1)
        t = F.layer_norm(t, (D,), ps["norm.weight"], ps["norm.bias"], eps=1e-6)
        logits = F.linear(t[:, 0], ps["head.weight"], ps["head.bias"])
    state = {"vit." + k: v.detach().numpy().astype(np.float32) for k, v in ps.items()}
    state.update(br)
    write_safetensors(os.path.join(outdir, "moe_state_eigen.safetensors"), state)
    recs = [("images", raw.astype(np.float32)), ("logits", logits.numpy())]
    for j, t1 in enumerate(top1s):
        recs.append(("top1_%d" % j, t1.numpy().astype(np.float32)))
    write_records(os.path.join(outdir, "moe_state_eigen.bin"), recs)


def main(outdir):
    torch.set_default_dtype(torch.float32)
    make_case(os.path.join(outdir, "moe_eigen_top1.bin"), 11, top_k=1, train=True)
    make_case(os.path.join(outdir, "moe_eigen_top2.bin"), 12, top_k=2, train=False)
    make_case(os.path.join(outdir, "moe_eigen_soft.bin"), 13, top_k=0, train=True)
    make_case(os.path.join(outdir, "moe_eigen_alltok.bin"), 14, top_k=1, train=True,
              patches_only=0, T=5)
    make_state(outdir)


if __name__ == "__main__":
    import sys
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                            "fixtures"))
