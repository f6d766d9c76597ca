"""On/off environment switches (``ssa.core.checks.env_switch``): one reading of on, off and unset for every switch,
and a typo refused with one line instead of silently meaning "on" (before: ``SSA_KEEP_MEMORY=off`` kept memory)."""

from __future__ import annotations

import pytest
from ssa_onnx import parity_cache
from ssa_torch.host import channels_last

from ssa.core import heap
from ssa.core.checks import ENV_SWITCHES, check_env_switches, env_switch
from ssa.errors import InvalidInputError
from ssa.session import rows_per_class_enabled

NAME = "SSA_TEST_SWITCH"


@pytest.mark.parametrize("value,meaning", [
    ("1", True), ("on", True), ("YES", True), (" true ", True),
    ("0", False), ("off", False), ("No", False), ("false", False),
    ("", None), ("  ", None),
])
def test_a_switch_reads_on_off_and_unset(monkeypatch, value, meaning):
    monkeypatch.setenv(NAME, value)
    assert env_switch(NAME) is meaning


def test_an_unset_switch_is_the_default(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    assert env_switch(NAME) is None


@pytest.mark.parametrize("value", ["of", "2", "disable", "1.0", "o n"])
def test_anything_else_is_refused_with_one_line(monkeypatch, value):
    monkeypatch.setenv(NAME, value)
    with pytest.raises(InvalidInputError) as info:
        env_switch(NAME)
    message = str(info.value)
    assert "\n" not in message and f"{NAME}={value.strip()!r}" in message and "0 (off) or 1 (on)" in message


# every switch's own reader goes through it: "off" in words switches each off, a typo is refused by each
READERS = {
    "SSA_KEEP_MEMORY": heap.wanted,
    "SSA_ROWS_PER_CLASS": rows_per_class_enabled,
    "SSA_CHANNELS_LAST": lambda: channels_last("cpu"),
    "SSA_PARITY_CACHE": parity_cache.enabled,
}


def test_every_switch_has_a_reader_here():
    assert set(READERS) == set(ENV_SWITCHES)


@pytest.mark.parametrize("name", sorted(READERS))
def test_each_switch_is_off_by_a_word_on_by_default_and_refuses_a_typo(monkeypatch, name):
    for other in ENV_SWITCHES:
        monkeypatch.delenv(other, raising=False)
    for var in heap._USER_MALLOC + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(var, raising=False)
    read = READERS[name]
    assert read() is True  # on by default on the CPU
    monkeypatch.setenv(name, "off")
    assert read() is False
    monkeypatch.setenv(name, "1")
    assert read() is True
    monkeypatch.setenv(name, "of")
    with pytest.raises(InvalidInputError, match=name):
        read()
    with pytest.raises(InvalidInputError, match=name):
        check_env_switches()
