"""Frozen dataclass configs from TOML (``config.py``): unknown keys with the nearest valid name, wrong types
naming the key, nested tables, JSON round trip, one-line file errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reprodiff.config import ConfigError, TomlConfig, from_dict, load_toml, read_toml


@dataclass(frozen=True)
class Inner:
    size: int = 1


@dataclass(frozen=True)
class Outer(TomlConfig):
    name: str = "a"
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    limit: float | None = None


def test_round_trip_through_json_and_lists_become_tuples() -> None:
    cfg = Outer.from_dict({"name": "b", "rate": 2, "sizes": [3, 4], "inner": {"size": 5}, "limit": None})
    assert cfg == Outer("b", 2.0, (3, 4), Inner(5)) and isinstance(cfg.rate, float)
    assert Outer.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("data", "match"), [
    ({"nmae": "x"}, r"unknown key 'nmae'; did you mean 'name'\?"),
    ({"inner": {"szie": 2}}, r"inner: unknown key 'szie'; did you mean 'size'\?"),
    ({"rate": "fast"}, r"rate: expected float, got str 'fast'"),
    ({"rate": True}, r"rate: expected float"),
    ({"rate": float("inf")}, r"rate: must be a finite number"),
    ({"sizes": [1, "2"]}, r"sizes\[1\]: expected int"),
    ({"limit": "none"}, r"limit: 'none' is not a valid"),
    ({"limit": float("nan")}, r"limit: must be a finite number, got nan"),  # was "nan is not a valid float | None"
])
def test_bad_values_name_the_key(data, match) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        from_dict(Outer, data)
    assert "\n" not in str(e.value)


def test_file_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        read_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(tmp_path / "bad.toml")
    (tmp_path / "c.toml").write_text('nmae = "x"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key 'nmae'"):
        load_toml(Outer, tmp_path / "c.toml")
