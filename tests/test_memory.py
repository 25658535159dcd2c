"""data_tools.memory: the mmap threshold is set for a read and restored after the last one."""

from __future__ import annotations

import threading

import pytest

from data_tools import memory


def test_unpooled_buffers_sets_and_restores_the_threshold_once(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    with memory.unpooled_buffers():
        with memory.unpooled_buffers():                  # nested: no second setting
            assert calls == [(-3, 128 * 1024)]
        assert calls == [(-3, 128 * 1024)]
    assert calls == [(-3, 128 * 1024), (-3, 32 * 1024 * 1024)]


def test_unpooled_buffers_restores_after_an_error_and_across_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: calls.append(value) or 1)
    with pytest.raises(ValueError):
        with memory.unpooled_buffers():
            raise ValueError("a bad file")
    assert calls == [128 * 1024, 32 * 1024 * 1024]
    calls.clear()
    inside, release = threading.Barrier(3), threading.Event()

    def reader():
        with memory.unpooled_buffers():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert calls == [128 * 1024]                         # both reading: set once
    release.set()
    for t in threads:
        t.join()
    assert calls == [128 * 1024, 32 * 1024 * 1024]       # restored when the last one left


def test_unpooled_buffers_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_mallopt", False)
    with memory.unpooled_buffers():
        pass
    assert memory._active == 0
