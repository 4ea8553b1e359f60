"""gpt-ts's train and validation loaders in Python: the same windows in the same order, from the same files.

A hand-off (`deno task handoff`) names the data, not its batches: a directory of prepared shards (`deno task
prepare`: index.json and uint16 shard files) with the SHA-256 of its index.json, or, for one text file (The
Verdict), the token ids of its train and val parts once. This module memory-maps those files and replays
lib/data/shards.ts's ShardLoader and lib/data/data.ts's DataLoader: splitmix32 and the Fisher-Yates shuffles with
JavaScript's arithmetic (uint32 via masking, products and divisions in float64, as Python's float is), so batch k
of an epoch is the same windows here as there. A rank reads only the windows of its own rows of a micro-batch.
Python's standard library and torch only.
"""
import array, bisect, hashlib, json, math, mmap, os
import torch

M32 = 0xFFFFFFFF


class DataError(Exception):
    """Data that does not match the hand-off: one line, the caller exits 2."""


def to_uint32(x):
    """JavaScript's `x >>> 0` of a float64: truncate, then modulo 2^32."""
    return int(x) % 2**32 if math.isfinite(x) else 0


def splitmix32(seed):
    """lib/data/data.ts's splitmix32: floats in [0, 1), bit for bit (Math.imul is the low 32 bits of the product)."""
    s = to_uint32(seed)

    def rand():
        nonlocal s
        s = (s + 0x9E3779B9) & M32
        z = ((s ^ (s >> 16)) * 0x85EBCA6B) & M32
        z = ((z ^ (z >> 13)) * 0xC2B2AE35) & M32
        return (z ^ (z >> 16)) / 4294967296.0

    return rand


def permutation(n, shuffle, seed):
    """A Fisher-Yates permutation of 0..n-1 seeded by `seed` (identity when not shuffling), as shards.ts's."""
    idx = list(range(n))
    if not shuffle:
        return idx
    rand, floor = splitmix32(seed), math.floor
    for i in range(n - 1, 0, -1):
        j = floor(rand() * (i + 1))
        idx[i], idx[j] = idx[j], idx[i]
    return idx


class Tokens:
    """uint16 token files, memory-mapped: `window(f, start, T)` is ids[start : start + T + 1] of file f."""

    def __init__(self, paths):
        self.paths, self.maps = paths, []
        for p in paths:
            with open(p, "rb") as fh:
                self.maps.append(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(fh.fileno()).st_size else b"")

    def window(self, f, start, T):
        raw = self.maps[f][2 * start : 2 * (start + T + 1)]
        return torch.frombuffer(bytearray(raw), dtype=torch.int16).to(torch.int64) & 0xFFFF  # (T + 1,)


class Loader:
    """One split as a list of windows per batch: (file, first token) pairs. `shards` (ShardLoader: windows never
    cross a file, shuffled shard order and shuffle buffer of `shuffle_shards` files) or one file (DataLoader)."""

    def __init__(self, tokens, counts, B, T, stride, seed, shuffle, drop_last, sharded, shuffle_shards=1):
        self.tokens, self.B, self.T, self.stride, self.seed = tokens, B, T, stride, seed
        self.shuffle, self.drop_last, self.sharded, self.shuffle_shards = shuffle, drop_last, sharded, shuffle_shards
        # windows of a file of n ids: range(0, n - T, stride), the book's rule
        self.per_file = [max(0, -(-(n - T) // stride)) for n in counts]
        self.windows = sum(self.per_file)
        self.starts = [0]
        for w in self.per_file:
            self.starts.append(self.starts[-1] + w)
        self.length = self.windows // B if drop_last else -(-self.windows // B)

    def epoch_seed(self, epoch):
        return float(self.seed) * 1000003.0 + float(epoch)

    def batches(self, epoch, start=0):
        """The batches of `epoch` from batch `start` (resuming mid-epoch), each a list of B (file, token) pairs."""
        if not self.sharded:
            order = permutation(self.windows, self.shuffle, self.epoch_seed(epoch))
            for k in range(start, self.length):
                yield [(0, w * self.stride) for w in order[k * self.B : (k + 1) * self.B]]
            return
        yield from self.stream(epoch, start, self.length, self.shuffle)

    def stream(self, epoch, start, stop, shuffle):
        """ShardLoader.stream: shard groups in a per-epoch order, each group's windows in its own shuffle."""
        B, es = self.B, self.epoch_seed(epoch)
        files = permutation(len(self.per_file), shuffle, es)
        skip, made, rows = start * B, start, []
        k = self.shuffle_shards if shuffle else 1
        for g in range(0, -(-len(files) // k)):
            if made >= stop:
                return
            group = files[g * k : (g + 1) * k]
            firsts = [0]
            for f in group:
                firsts.append(firsts[-1] + self.per_file[f])
            n = firsts[-1]
            if skip >= n:
                skip -= n
                continue
            order = permutation(n, shuffle, to_uint32(es * 31.0 + g))
            for w in range(skip, n):
                win = order[w]
                j = bisect.bisect_right(firsts, win) - 1
                rows.append((group[j], (win - firsts[j]) * self.stride))
                if len(rows) == B:
                    yield rows
                    rows, made = [], made + 1
                    if made >= stop:
                        return
            skip = 0
        if rows and not self.drop_last and made < stop:
            yield rows

    def ordered(self, limit):
        """Evaluation's batches: DataLoader's first `limit` in text order; ShardLoader's all in shard order, or
        `limit` whose windows are spread evenly over the split."""
        n = min(limit, self.length)
        if not self.sharded:
            for k in range(n):
                yield [(0, w * self.stride) for w in range(k * self.B, min((k + 1) * self.B, self.windows))]
            return
        if n == self.length:
            yield from self.stream(0, 0, n, False)
            return
        want, rows = n * self.B, []
        for nxt in range(want):
            w = math.floor((nxt * self.windows) / want)
            f = bisect.bisect_right(self.starts, w) - 1
            rows.append((f, (w - self.starts[f]) * self.stride))
            if len(rows) == self.B:
                yield rows
                rows = []

    def tensors(self, rows):
        """(inputs, targets) int64 of shape (len(rows), T) for the windows `rows` (only these are read)."""
        w = torch.stack([self.tokens.window(f, s, self.T) for f, s in rows])  # (rows, T + 1)
        return w[:, :-1], w[:, 1:]


def index_sha256(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read the shard index ({e.strerror})")


def checked_files(paths_tokens):
    """Every file present and as long as the index says (2 bytes an id), before anything is trained."""
    for path, n in paths_tokens:
        try:
            size = os.stat(path).st_size
        except OSError:
            raise DataError(f"{path}: missing shard (named in the hand-off's index); copy the shards again")
        if size < 2 * n:
            raise DataError(f"{path}: shard shorter than its index says ({size} bytes, expected {2 * n}); copy the shards again")
    return [p for p, _ in paths_tokens]


def open_data(d, spec, shards_dir=None):
    """The train and val loaders of hand-off directory `d`'s `data` entry; DataError on data that does not match."""
    B, T, stride, seed = spec["batch_size"], spec["context"], spec["stride"], spec["seed"]
    if spec["kind"] == "tokens":  # one text file: DataLoader over each part's ids
        parts = {}
        for split in ("train", "val"):
            p = spec[split]
            paths = checked_files([(os.path.join(d, p["file"]), p["tokens"])])
            parts[split] = (Tokens(paths), [p["tokens"]])
        train = Loader(*parts["train"], B, T, stride, seed, True, True, False)
        val = Loader(*parts["val"], B, T, stride, seed, False, False, False)
    else:
        root = shards_dir or os.path.join(d, spec["dir"])  # an absolute dir stays as it is
        index_path = os.path.join(root, "index.json")
        got = index_sha256(index_path)
        if got != spec["index_sha256"]:
            raise DataError(f"{index_path}: index hash {got[:16]}… is not the hand-off's {spec['index_sha256'][:16]}… "
                            f"(other or re-prepared shards); use the shards the run was handed off with")
        index = json.load(open(index_path))
        loaders = []
        for split, shuffle in (("train", True), ("val", False)):
            shards = index["splits"][split]["shards"]
            paths = checked_files([(os.path.join(root, s["file"]), s["tokens"]) for s in shards])
            counts = [s["tokens"] for s in shards]
            loaders.append(Loader(Tokens(paths), counts, B, T, stride, seed, shuffle, shuffle, True,
                                  spec["shuffle_shards"] if shuffle else 1))
        train, val = loaders
    for name, L, want in (("train", train, spec["train_batches"]), ("val", val, spec["val_batches"])):
        if L.length != want:
            raise DataError(f"{d}/handoff.json: data: {name} has {L.length} batches here, the hand-off says {want}")
    return train, val


def remaining(loader, epoch, batch, epochs, k):
    """The micro-batches the rest of the run consumes from (epoch, batch): whole groups of k an epoch (drop_last)."""
    used = loader.length // k * k
    for e in range(epoch, epochs):
        i = batch if e == epoch else 0
        for rows in loader.batches(e, i):
            if i >= used:
                break
            i += 1
            yield rows


def checksum(x, y):
    """SHA-256 of a micro-batch slice's inputs then targets as little-endian uint16 (tests/handoff_test.ts's too)."""
    h = hashlib.sha256()
    for t in (x, y):
        h.update(array.array("H", t.flatten().tolist()).tobytes())
    return h.hexdigest()
