#!/usr/bin/python3
"""Fixtures for the few-shot probes and the routing heatmaps (area "viz").

Run by hand with Debian's python3-numpy:
    /usr/bin/python3 tests/gen_fixtures.py viz
Reference computations in float64 numpy, written as text (every number exact:
float32 values with 9 significant digits, doubles with 17) for tests/check_probe.c:

  viz_probe_primal.txt  D=6,  K=4, 40 training rows, 5 shots per class chosen by
                        fixed indices (n=20 >= D+1: the primal form), lambda 1024
  viz_probe_dual.txt    D=30, K=4, 2 shots per class (n=8 < D+1: the dual form),
                        lambda 2
  viz_probe_ncm.txt     the primal case's data with the nearest-class-mean probe
  viz_fewshot_select.txt  labels of 40 samples and the indices the protocol picks
                        for seeds 0..2 and shots 1, 3 (Philox4x32-10 re-implemented
                        here from lib/rng.c's documentation)

Text layout of a probe case: "D K ntrain ntest nidx lambda", then xtrain
[ntrain*D], ytrain [ntrain], idx [nidx], xtest [ntest*D], ytest [ntest],
w [K*(D+1)] (row k: class k's weights, the last the bias feature's; NCM: class
means and 0), pred [ntest], correct.

And .npy inputs for the shell tests (tests/tools/heatmap.sh, fewshot.sh):
  viz_routing10.npy   f32 [2, 4, 10] routing counts (expert e prefers classes
                      e, e+4, e+8)
  viz_routing200.npy  f32 [1, 8, 200]
  viz_routing_rank2.npy  f32 [4, 10] (wrong rank)
  viz_classes10.txt   10 class names, one a line
  viz_classes10.npz   the same as a dataset's 'classes' ('|S10') beside 'labels'
  viz_feat_{train,test}.npy f32 [60, 8] / [40, 8], viz_lab_{train,test}.npy i64,
  viz_feat_test5.npy  f32 [40, 5] (a dimension mismatch)
  viz_fewshot_{ridge,ncm}.tsv  the table emoe-fewshot -v -s 1,5,10 must print for
                      them (this script's own protocol implementation)
"""
import os

import numpy as np

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
BIAS = 100.0
FEWSHOT_TAG = 0x66657773686F74


def philox4x32(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return [c0, c1, c2, c3]


class Rng:
    def __init__(self, seed, stream):
        self.seed, self.stream, self.pos = seed, stream, 0

    def u32(self):
        block = self.pos >> 2
        out = philox4x32([block & M32, block >> 32, self.stream & M32, self.stream >> 32],
                         [self.seed & M32, self.seed >> 32])
        v = out[self.pos & 3]
        self.pos += 1
        return v

    def below(self, n):
        if n <= 1:
            return 0
        limit = ((1 << 32) - n) % n
        while True:
            m = self.u32() * n
            if (m & M32) >= limit:
                return m >> 32


def seed_derive(seed, tag):
    z = (seed + 0x9E3779B97F4A7C15 * (tag + 1)) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def shuffle(idx, seed, stream):
    r = Rng(seed, stream)
    for i in range(len(idx), 1, -1):
        j = r.below(i)
        idx[i - 1], idx[j] = idx[j], idx[i - 1]


def select(labels, K, shots, seed):
    out = []
    for c in range(K):
        order = [i for i, y in enumerate(labels) if y == c]
        shuffle(order, seed_derive(seed, FEWSHOT_TAG), c)
        out += order[:shots]
    return out


def whiten(xs):
    x = xs.astype(np.float64)
    mean = x.mean(0)
    std = x.std(0) + 1e-5
    return mean, std


def augment(x, mean, std):
    z = (x.astype(np.float64) - mean) / std
    return np.concatenate([z, np.full((len(z), 1), BIAS)], axis=1)


def ridge(xa, y, K, lam):
    Y = 2.0 * np.eye(K)[y] - 1.0
    n, d1 = xa.shape
    if n >= d1:
        W = np.linalg.solve(xa.T @ xa + lam * np.eye(d1), xa.T @ Y)
    else:
        W = xa.T @ np.linalg.solve(xa @ xa.T + lam * np.eye(n), Y)
    return W.T  # [K, D+1]


def fmt32(a):
    return " ".join("%.9g" % v for v in np.asarray(a, dtype=np.float32).ravel())


def fmt64(a):
    return " ".join("%.17g" % v for v in np.asarray(a, dtype=np.float64).ravel())


def fmti(a):
    return " ".join("%d" % v for v in np.asarray(a).ravel())


def clustered(rng, K, n, D, spread):
    centres = rng.normal(size=(K, D)) * spread
    y = np.arange(n) % K
    rng.shuffle(y)
    x = (centres[y] + rng.normal(size=(n, D))).astype(np.float32)
    return x, y.astype(np.int32)


def probe_case(outdir, name, D, K, shots, lam, seed, kind="ridge"):
    rng = np.random.default_rng(seed)
    xtr, ytr = clustered(rng, K, 40 + 20 * K, D, 1.5)
    centres_rng = np.random.default_rng(seed)  # same centres for the test split
    cen = centres_rng.normal(size=(K, D)) * 1.5
    yte = (np.arange(50) % K).astype(np.int32)
    xte = (cen[yte] + rng.normal(size=(50, D))).astype(np.float32)
    # fixed indices: the first `shots` training rows of each class, in order
    idx = np.concatenate([np.nonzero(ytr == c)[0][:shots] for c in range(K)])
    mean, std = whiten(xtr[idx])
    xa = augment(xtr[idx], mean, std)
    if kind == "ridge":
        W = ridge(xa, ytr[idx], K, lam)
        pred = np.argmax(augment(xte, mean, std) @ W.T, axis=1)
    else:
        means = np.stack([xa[ytr[idx] == c, :D].mean(0) for c in range(K)])
        W = np.concatenate([means, np.zeros((K, 1))], axis=1)
        zt = augment(xte, mean, std)[:, :D]
        d2 = ((zt[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        pred = np.argmin(d2, axis=1)
    correct = int((pred == yte).sum())
    with open(os.path.join(outdir, "viz_probe_%s.txt" % name), "w") as f:
        f.write("%d %d %d %d %d %.17g\n" % (D, K, len(xtr), len(xte), len(idx), lam))
        for line in (fmt32(xtr), fmti(ytr), fmti(idx), fmt32(xte), fmti(yte), fmt64(W),
                     fmti(pred), "%d" % correct):
            f.write(line + "\n")
    print("  %s: D=%d K=%d n=%d correct %d/%d" % (name, D, K, len(idx), correct, len(xte)))


def main(outdir):
    probe_case(outdir, "primal", D=6, K=4, shots=5, lam=1024.0, seed=1)
    probe_case(outdir, "dual", D=30, K=4, shots=2, lam=2.0, seed=2)
    probe_case(outdir, "ncm", D=6, K=4, shots=5, lam=1024.0, seed=1, kind="ncm")

    rng = np.random.default_rng(3)
    labels = (np.arange(40) % 4).astype(np.int32)
    rng.shuffle(labels)
    with open(os.path.join(outdir, "viz_fewshot_select.txt"), "w") as f:
        f.write("40 4\n" + fmti(labels) + "\n")
        for shots in (1, 3):
            for seed in range(3):
                f.write("%d %d %s\n" % (shots, seed, fmti(select(list(labels), 4, shots, seed))))

    # routing tensors
    r = np.zeros((2, 4, 10), dtype=np.float32)
    for layer in range(2):
        for e in range(4):
            for k in range(10):
                r[layer, e, k] = (50.0 if k % 4 == e else 5.0) + 3 * layer + k
    np.save(os.path.join(outdir, "viz_routing10.npy"), r)
    r200 = np.random.default_rng(4).poisson(20.0, size=(1, 8, 200)).astype(np.float32)
    np.save(os.path.join(outdir, "viz_routing200.npy"), r200)
    np.save(os.path.join(outdir, "viz_routing_rank2.npy"), r[0])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
             "ship", "truck"]
    with open(os.path.join(outdir, "viz_classes10.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    np.savez(os.path.join(outdir, "viz_classes10.npz"),
             labels=np.arange(10, dtype=np.int64), classes=np.array(names, dtype="S"))

    # features for the shell test of emoe-fewshot
    rng = np.random.default_rng(5)
    cen = rng.normal(size=(4, 8)) * 3
    ytr = (np.arange(60) % 4).astype(np.int64)
    yte = (np.arange(40) % 4).astype(np.int64)
    np.save(os.path.join(outdir, "viz_feat_train.npy"),
            (cen[ytr] + rng.normal(size=(60, 8))).astype(np.float32))
    np.save(os.path.join(outdir, "viz_lab_train.npy"), ytr)
    np.save(os.path.join(outdir, "viz_feat_test.npy"),
            (cen[yte] + rng.normal(size=(40, 8))).astype(np.float32))
    np.save(os.path.join(outdir, "viz_lab_test.npy"), yte)
    np.save(os.path.join(outdir, "viz_feat_test5.npy"),
            rng.normal(size=(40, 5)).astype(np.float32))

    # the expected output of emoe-fewshot -v -s 1,5,10 on them (ridge and ncm)
    xtr = np.load(os.path.join(outdir, "viz_feat_train.npy"))
    xte = np.load(os.path.join(outdir, "viz_feat_test.npy"))
    for kind in ("ridge", "ncm"):
        lines = ["shots\tmean\tstd\tseed0\tseed1\tseed2"]
        for shots in (1, 5, 10):
            accs = []
            for seed in range(3):
                idx = select(list(ytr), 4, shots, seed)
                mean, std = whiten(xtr[idx])
                xa = augment(xtr[idx], mean, std)
                ta = augment(xte, mean, std)
                if kind == "ridge":
                    pred = np.argmax(ta @ ridge(xa, ytr[idx], 4, 1024.0).T, axis=1)
                else:
                    means = np.stack([xa[ytr[idx] == c, :8].mean(0) for c in range(4)])
                    d2 = ((ta[:, None, :8] - means[None]) ** 2).sum(-1)
                    pred = np.argmin(d2, axis=1)
                accs.append(float((pred == yte).mean()))
            a = np.array(accs)
            lines.append("%d\t%.2f\t%.2f\t%s" % (shots, 100 * a.mean(), 100 * a.std(),
                                                 "\t".join("%.2f" % (100 * v) for v in a)))
        with open(os.path.join(outdir, "viz_fewshot_%s.tsv" % kind), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
