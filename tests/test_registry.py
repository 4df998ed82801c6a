"""core.registry: the one registry of every package (rules, presets, datasets, GANs)."""
from __future__ import annotations

import pytest

from core.errors import UserError
from core.registry import Registry, UnknownNameError


def test_register_as_decorator_or_call_and_read_back():
    reg: Registry = Registry("colour")

    @reg.register("red")
    def red():
        return "r"

    assert red() == "r" and reg.get("red") is red  # the decorator hands the function back
    assert reg.register("blue", 3) == 3
    assert reg.get("blue") == 3 and reg["blue"] == 3
    assert "red" in reg and "green" not in reg
    assert reg.names() == ["blue", "red"] and list(reg) == ["red", "blue"] and len(reg) == 2
    assert dict(reg.items()) == {"red": red, "blue": 3}


def test_an_unknown_name_is_one_line_with_close_matches_and_every_choice():
    reg = Registry("mask rule")
    reg.register("lighting", 1)
    reg.register("mean", 2)
    with pytest.raises(UnknownNameError) as err:
        reg.get("lightning")
    assert str(err.value) == "unknown mask rule 'lightning' (did you mean lighting?); choose from lighting, mean"
    assert isinstance(err.value, UserError) and isinstance(err.value, KeyError)
    with pytest.raises(UnknownNameError, match=r"^unknown mask rule 'zzz'; choose from lighting, mean$"):
        reg["zzz"]


def test_other_accepted_forms_are_listed_after_the_names():
    reg = Registry("dataset", also=("folder:PATH",))
    reg.register("ecssd", 1)
    with pytest.raises(UnknownNameError, match=r"did you mean ecssd\?\); choose from ecssd, folder:PATH$"):
        reg.get("ecsd")


def test_a_name_registered_twice_is_a_bug():
    reg = Registry("GAN")
    reg.register("toy", 1)
    with pytest.raises(ValueError, match="GAN 'toy' registered twice"):
        reg.register("toy")(lambda: None)
