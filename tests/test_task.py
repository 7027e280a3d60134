"""Task identity, Dragonfly 1's piece-size rule and the piece grid."""

import hashlib

import numpy as np
import pytest

from dfnet.core import Task, TaskError, piece_size_for, task_id
from dfnet.core.task import normalize_url

MiB = 1024 * 1024


@pytest.mark.parametrize(
    "length, expected",
    [
        (0, 4 * MiB),
        (1 * MiB, 4 * MiB),
        (200 * MiB, 4 * MiB),  # "up to 200 MiB" includes 200 MiB
        (200 * MiB + 1, 4 * MiB),  # floor(2.00..) - 2 = 0 extra MiB
        (300 * MiB - 1, 4 * MiB),
        (300 * MiB, 5 * MiB),
        (1024 * MiB, 12 * MiB),  # 1 GiB: floor(10.24) = 10 -> 4 + 8
        (1299 * MiB, 14 * MiB),
        (1300 * MiB, 15 * MiB),  # the cap is reached exactly
        (5_000_000_000, 15 * MiB),  # 5 GB: 4 + 45 MiB, capped at 15 MiB
        (10**15, 15 * MiB),
    ],
)
def test_piece_size_rule(length, expected):
    assert piece_size_for(length) == expected


def test_piece_size_refuses_bad_lengths():
    with pytest.raises(TaskError):
        piece_size_for(-1)
    with pytest.raises(TaskError):
        piece_size_for(5e9)  # a float length is a units bug, not something to round


def test_task_id_is_sha256_of_normalised_url():
    url = "https://example.com/a/b.tar"
    assert task_id(url) == hashlib.sha256(url.encode()).hexdigest()
    assert len(task_id(url)) == 64


def test_task_id_ignores_filtered_params_and_param_order():
    a = "https://cdn.example.com/img.tar?Expires=1&b=2&a=1&Signature=xyz"
    b = "https://cdn.example.com/img.tar?a=1&Signature=other&b=2&Expires=999"
    f = ["Expires", "Signature"]
    assert task_id(a, f) == task_id(b, f)
    assert task_id(a, f) == task_id("https://cdn.example.com/img.tar?b=2&a=1")
    assert task_id(a) != task_id(b)  # without the filter the signatures differ
    # Dragonfly's own spelling of the filter, "Expires&Signature", is accepted too.
    assert task_id(a, "Expires&Signature") == task_id(a, f)
    # Filtering everything leaves no dangling "?".
    assert normalize_url("http://h/p?x=1", ["x"]) == "http://h/p"


def test_task_id_normalises_scheme_host_port_fragment():
    base = task_id("http://example.com/x")
    assert task_id("HTTP://Example.COM:80/x#frag") == base
    assert task_id("http://example.com/x#other") == base
    assert task_id("http://example.com:8080/x") != base
    assert task_id("https://example.com:443/x") == task_id("https://example.com/x")
    assert task_id("https://example.com:80/x") != task_id("https://example.com/x")
    assert task_id("http://example.com") == task_id("http://example.com/")
    # The path is case-sensitive and kept byte for byte.
    assert task_id("http://example.com/X") != base
    assert normalize_url("http://[::1]:80/p") == "http://[::1]/p"


def test_repeated_params_keep_their_order():
    assert normalize_url("http://h/p?b=1&a=2&a=1") == "http://h/p?a=2&a=1&b=1"
    assert task_id("http://h/p?a=2&a=1") != task_id("http://h/p?a=1&a=2")


def test_task_id_tags_distinguish():
    url = "https://example.com/layer"
    assert task_id(url, tag="sha256:aa") != task_id(url, tag="sha256:bb")
    assert task_id(url, tag="sha256:aa") != task_id(url)
    assert task_id(url, tag="") == task_id(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/file",
        "/just/a/path",
        "ftp://example.com/file",
        "file:///etc/passwd",
        "http:///no-host",
        "http://example.com:notaport/x",
        "http://example.com:99999/x",
        "https://exa\nmple.com/x",
    ],
)
def test_bad_urls_refused_with_one_line_message(url):
    with pytest.raises(TaskError) as info:
        task_id(url)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("length", [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 1024 * MiB, 5_000_000_000])
def test_pieces_tile_the_file(length):
    t = Task.for_url("http://example.com/f", length)
    assert t.piece_size == piece_size_for(length)
    n = t.n_pieces
    assert sum(t.piece_length(i) for i in range(n)) == length
    offset = 0
    for i in range(n):
        assert t.piece_offset(i) == offset
        assert 0 < t.piece_length(i) <= t.piece_size
        if i < n - 1:
            assert t.piece_length(i) == t.piece_size  # only the last may be short
        offset += t.piece_length(i)
    with pytest.raises(IndexError):
        t.piece_offset(n)
    with pytest.raises(IndexError):
        t.piece_length(-1)


def test_one_gib_grid():
    t = Task.for_url("http://example.com/f", 1024 * MiB)
    assert t.piece_size == 12 * MiB
    assert t.n_pieces == 86
    assert t.piece_offset(85) == 85 * 12 * MiB
    assert t.piece_length(85) == 4 * MiB


def test_zero_length_has_no_pieces():
    t = Task.for_url("http://example.com/empty", 0)
    assert t.n_pieces == 0
    with pytest.raises(IndexError):
        t.piece_length(0)


def test_task_for_url_options_and_validation():
    t = Task.for_url("http://e.com/f?sig=1", 10, piece_size=3, filter_params=["sig"], tag="v1")
    assert t.id == task_id("http://e.com/f", tag="v1")
    assert t.url == "http://e.com/f?sig=1"  # the task keeps the URL it was asked for
    assert (t.n_pieces, t.piece_length(3)) == (4, 1)
    with pytest.raises(TaskError):
        Task.for_url("http://e.com/f", -1)
    with pytest.raises(TaskError):
        Task.for_url("http://e.com/f", 10, piece_size=0)
    with pytest.raises(TaskError):
        Task("id", "http://e.com/f", 10.0, 3)
    with pytest.raises(TaskError):
        Task.for_url("gopher://e.com/f", 10)


def test_task_is_frozen_and_takes_numpy_ints():
    t = Task.for_url("http://e.com/f", np.int64(5_000_000_000))
    assert type(t.length) is int and t.piece_size == 15 * MiB
    with pytest.raises(AttributeError):
        t.length = 1  # type: ignore[misc]
