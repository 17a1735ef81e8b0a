"""Synthetic weights read back from the cache (speed 31): a copy is used only when its tensors hash to the digest
committed with the code (exporter/synthetic_digests.json), so the cache still proves nothing by itself: a copy with
one value changed, another seed's weights or bytes that do not parse are never used (the weights are computed, and
the copy replaced), the table matches a fresh computation, and `--no-cache` neither reads nor writes a copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from exporter import weights
from exporter.backbones import list_backbones
from exporter.weights import (
    COPY_HEADER_BYTES,
    committed_digests,
    load_weights,
    state_dict_sha256,
    weights_store,
)
from verify.cache import ENV_DIR, ENV_OFF, WEIGHTS, Cache

BACKBONE = "mobilenet_v3_small"
"""The smallest registered backbone: its weights cost 0.17 s to compute, its copy is 10 MB."""
SEED = 0


@pytest.fixture
def computed(monkeypatch):
    """Each call of the weights' generator (the in-process memo emptied first, and after)."""
    calls, real = [], weights._computed_state_dict
    monkeypatch.setattr(weights, "_computed_state_dict", lambda *a: calls.append(a) or real(*a))
    weights._synthetic_state_dict.cache_clear()
    yield calls
    weights._synthetic_state_dict.cache_clear()


def build(cache: Cache | None, seed: int = SEED):
    weights._synthetic_state_dict.cache_clear()
    with weights_store(cache):
        return load_weights("synthetic", BACKBONE, seed)


def copy_path(cache: Cache) -> Path:
    return cache.base / WEIGHTS / f"{committed_digests()[(BACKBONE, SEED)][0]}.safetensors"


def test_the_table_holds_every_backbone_and_a_fresh_computation_matches_it():
    """A change to the generator (or a torch whose weights differ) fails here, not as copies that never hit."""
    assert {backbone for backbone, seed in committed_digests() if seed == SEED} == set(list_backbones())
    state = weights._computed_state_dict(BACKBONE, SEED)
    assert committed_digests()[(BACKBONE, SEED)] == (state_dict_sha256(state),
                                                     sum(t.numel() * t.element_size() for t in state.values()))


def test_weights_computed_once_are_read_back_as_the_same_tensors(tmp_path, computed):
    cache = Cache(tmp_path / "c")
    first = build(cache)
    assert computed == [(BACKBONE, SEED)] and cache.weights_stats.stores == {WEIGHTS: 1}
    assert cache.info()["weights"] == 1 and cache.info()["entries"] == {}
    again = build(cache)
    assert computed == [(BACKBONE, SEED)] and cache.weights_stats.hits == {WEIGHTS: 1}  # not computed again
    # counted apart: whether a run reads or keeps a copy depends on what its process computed before
    assert cache.stats.to_dict() == {"hits": {}, "misses": {}, "corrupt": {}, "stores": {}}
    assert again.sha256 == first.sha256 == committed_digests()[(BACKBONE, SEED)][0]
    assert again.state_dict.keys() == first.state_dict.keys()
    assert all(torch.equal(again.state_dict[k], v) and again.state_dict[k].dtype == v.dtype
               for k, v in first.state_dict.items())


def one_value_changed(data: bytes, cache: Cache) -> bytes:
    from safetensors.torch import load, save

    state = load(data)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] += 1e-3
    return save(state)


def another_seeds_weights(data: bytes, cache: Cache) -> bytes:
    from safetensors.torch import save

    weights._synthetic_state_dict.cache_clear()
    return save(weights._computed_state_dict(BACKBONE, SEED + 1))


def a_key_renamed(data: bytes, cache: Cache) -> bytes:
    from safetensors.torch import load, save

    state = load(data)
    key = sorted(state)[0]
    state[f"x{key}"] = state.pop(key)
    return save(state)


@pytest.mark.parametrize("tamper", [
    one_value_changed, another_seeds_weights, a_key_renamed,
    lambda data, cache: data[: len(data) // 2],  # truncated
    lambda data, cache: b"\xff" * 64,  # not safetensors at all
    lambda data, cache: data + b"\0" * (COPY_HEADER_BYTES + 1),  # larger than its weights: refused unread
], ids=["one value changed", "another seed's weights", "a key renamed", "truncated", "not safetensors", "too large"])
def test_a_copy_that_is_not_the_committed_weights_is_never_used(tmp_path, computed, tamper):
    cache = Cache(tmp_path / "c")
    fresh = build(cache)
    path = copy_path(cache)
    forged = tamper(path.read_bytes(), cache)
    path.write_bytes(forged)
    computed.clear()
    rebuilt = build(cache)
    assert computed == [(BACKBONE, SEED)], "the forged copy was used instead of computing the weights"
    assert rebuilt.sha256 == fresh.sha256 == state_dict_sha256(rebuilt.state_dict)
    assert all(torch.equal(rebuilt.state_dict[k], v) for k, v in fresh.state_dict.items())
    assert cache.weights_stats.corrupt == {WEIGHTS: 1} and not cache.weights_stats.hits
    assert path.read_bytes() != forged  # replaced by the computed weights' copy, which is then used
    computed.clear()
    assert build(cache).sha256 == fresh.sha256 and not computed


def test_a_link_where_the_copy_belongs_is_never_followed(tmp_path, computed):
    """A symbolic link named as the copy, to a good copy outside the cache: not read (O_NOFOLLOW), removed as a link;
    its target is untouched."""
    cache = Cache(tmp_path / "c")
    build(cache)
    outside = tmp_path / "outside.safetensors"
    path = copy_path(cache)
    os.replace(path, outside)
    kept = outside.read_bytes()
    path.symlink_to(outside)
    computed.clear()
    build(cache)
    assert computed == [(BACKBONE, SEED)] and cache.weights_stats.corrupt == {WEIGHTS: 1}
    assert not path.is_symlink() and outside.read_bytes() == kept


def test_weights_outside_the_table_are_computed_and_never_kept(tmp_path, computed):
    """Seed 1 has no committed digest: nothing binds a copy to it, so none is read or written."""
    cache = Cache(tmp_path / "c")
    build(cache, seed=SEED + 1)
    build(cache, seed=SEED + 1)
    assert len(computed) == 2 and cache.info()["weights"] == 0 and not cache.weights_stats.to_dict()["misses"]


def test_prune_counts_a_copy_as_an_entry_and_clear_removes_it(tmp_path, computed):
    cache = Cache(tmp_path / "c")
    build(cache)
    assert cache.prune(cache.info()["bytes"]) == (0, 0)
    removed, freed = cache.prune(0)
    assert removed == 1 and freed >= committed_digests()[(BACKBONE, SEED)][1] and cache.info()["weights"] == 0
    build(cache)
    assert cache.clear() > 0 and not cache.base.exists()


@pytest.mark.parametrize("how", ["--no-cache", ENV_OFF, "--sign-key"])
def test_no_cache_neither_reads_nor_writes_a_copy(tmp_path, monkeypatch, computed, how):
    """`verify export --no-cache` (or $BACKBONE_VERIFY_NO_CACHE=1) with a good copy in the cache folder: the weights
    are computed, the copy is not even opened (a read would touch it) and nothing is written; the control run without
    it reads the copy. Each run stops right after the build."""
    from exporter.errors import UsageError
    from tests.helpers import invoke, make_keys
    from verify.pipeline import overlap, stages

    folder = tmp_path / "c"
    build(Cache(folder))
    monkeypatch.setenv(ENV_DIR, str(folder))
    monkeypatch.setenv(overlap.MODE_ENV, "off")
    built = []

    def stop(request, plan, build, *args, **kwargs):
        built.append(build.built.weights.sha256)
        raise UsageError("stopped after the build")

    monkeypatch.setattr(stages, "finish_cell", stop)
    args = ["export", "-b", BACKBONE, "--shape", "1x3x32x32", "--out", tmp_path / "out"]
    path = copy_path(Cache(folder))
    os.utime(path, (1, 1))
    computed.clear()
    weights._synthetic_state_dict.cache_clear()
    assert "stopped after the build" in invoke(*args).output
    assert not computed and path.stat().st_mtime != 1  # the control: read from the copy (and touched)
    os.utime(path, (1, 1))
    before = sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))
    weights._synthetic_state_dict.cache_clear()
    if how == ENV_OFF:
        monkeypatch.setenv(ENV_OFF, "1")
    extra = {"--no-cache": ["--no-cache"]}.get(how, [])
    if how == "--sign-key":  # a signed folder says this run made every file: no copy is read or kept either
        (tmp_path / "keys").mkdir()
        extra = ["--sign-key", make_keys(tmp_path / "keys")[0]]
    result = invoke(*args, *extra)
    assert "stopped after the build" in result.output
    assert computed == [(BACKBONE, SEED)] and built[0] == built[1]
    assert sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")) == before
