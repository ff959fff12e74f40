"""Person names (connector/names.py): when two names are one person's, and which names show
nothing at all. What ICU's UTS #39 skeleton and NFKC fold together, the store refuses as
`name_taken`; what shows nothing, validation refuses."""

from __future__ import annotations

import threading

import pytest

from connector.names import name_key, visible


@pytest.mark.parametrize(
    "lookalike",
    [
        "grace hopper",  # case
        "GRACE   HOPPER",  # case and spaces
        "\uff27\uff52\uff41\uff43\uff45 \uff28\uff4f\uff50\uff50\uff45\uff52",  # fullwidth
        "Gr\u0430ce H\u043epper",  # Cyrillic a and o
        "Grace\u200b Hopper",  # zero-width space
        "Grace\u00a0Hopper",  # no-break space
        "Grac\u0435 Hopp\u0435r",  # Cyrillic e
        "Grace Hopper\u0336",  # a stray combining mark
    ],
)
def test_lookalikes_of_a_name_share_its_key(lookalike):
    assert name_key(lookalike) == name_key("Grace Hopper")


@pytest.mark.parametrize(
    ("one", "other"),
    [("Ada Lovelace", "Alan Turing"), ("Zoë", "Zoe"), ("Anna", "Anne"), ("李雷", "韩梅梅")],
)
def test_different_names_keep_different_keys(one, other):
    assert name_key(one) != name_key(other)


def test_decomposed_and_composed_accents_are_one_name():
    assert name_key("Zoe\u0308") == name_key("Zo\u00eb")


@pytest.mark.parametrize(
    "unseen", ["\u200b\u200d", "\u0301\u0302", "\u3000", "\ufeff", "\u180e", "\u2060\u2061", " "]
)
def test_a_name_of_invisible_combining_or_ignorable_characters_is_not_visible(unseen):
    assert not visible(unseen)


@pytest.mark.parametrize("seen", ["A", "李", "Zoë", "\u0301a", "O'Brien"])
def test_a_name_with_one_visible_character_is_visible(seen):
    assert visible(seen)


def test_keys_are_the_same_from_many_threads():
    expected = name_key("Gr\u0430ce H\u043epper")
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(name_key("Gr\u0430ce H\u043epper")))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 16
