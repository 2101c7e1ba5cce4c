"""Sweep grids: ``--grid key=v1,v2`` products and named ``--point`` overrides of a config.

`parse_grid` types every value like the config field it overrides; `parse_points`
reads named points (``"name: key=value; key=value"``) for studies whose rows are not
a product; `combine` multiplies the two; `apply_point` makes a point's config and
`slugify` its directory name. `kd_jax.sweep` runs the points.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import itertools
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from kd_jax.config import schema
from kd_jax.core.errors import ConfigError
from kd_jax.reporting import stats

Point = dict[str, Any]
NamedPoint = tuple[str | None, Point]     # (name or None, overrides): see `parse_points`

_BOOLS = {"true": True, "1": True, "false": False, "0": False}
_SLUG_SAFE = re.compile(r"[^A-Za-z0-9._+\-]")
_MAX_SLUG = 180  # file names are limited to 255 bytes; leave room for a hash suffix.



def _split_values(text: str) -> list[str]:
  """Splits on commas outside brackets, so tuple values like ``(16,32)`` survive."""
  parts, depth, current = [], 0, []
  for char in text:
    depth += char in "([{"
    depth -= char in ")]}"
    if char == "," and depth == 0:
      parts.append("".join(current).strip())
      current = []
    else:
      current.append(char)
  parts.append("".join(current).strip())
  return parts


def _resolve(config: ml_collections.ConfigDict, key: str,
             flag: str = "--grid") -> tuple[Any, type]:
  """The current value of a dotted key and its field type; ValueError if unknown."""
  try:
    return schema.resolve_field(config, key)
  except ValueError as e:
    raise ConfigError(key, f"{flag} key {key!r}: {e}") from None


def _parse_value(key: str, text: str, current: Any, field_type: type) -> Any:
  """Converts one grid value to the type of the field it overrides."""
  def bad(expected: str) -> ValueError:
    return ConfigError(key, f"--grid {key}: cannot read {text!r} as {expected} (the type of "
                      f"{key} in the config, currently {current!r}).")

  if isinstance(current, ml_collections.ConfigDict):
    if "init" not in current:
      raise ConfigError(None, f"--grid key {key!r} is a group of fields, not a value; grid one "
                       f"of them instead: {', '.join(f'{key}.{k}' for k in current)}.")
    # Schedule shorthand: `temperature=4` is the constant schedule at 4.
    return _parse_value(key, text, current.init, type(current.init))
  if field_type is bool:
    if text.lower() not in _BOOLS:
      raise bad("a bool (true/false/1/0)")
    return _BOOLS[text.lower()]
  if field_type in (int, float):
    try:
      return field_type(text)
    except ValueError:
      raise bad(field_type.__name__) from None
  if field_type in (tuple, list):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise bad(f"a {field_type.__name__} literal like (16,32)") from None
    if not isinstance(value, (tuple, list)):
      raise bad(f"a {field_type.__name__} literal like (16,32)")
    return field_type(value)
  if field_type is type(None):  # An unset field: take the most specific literal.
    if text.lower() in ("true", "false"):
      return text.lower() == "true"
    for convert in (int, float):
      try:
        return convert(text)
      except ValueError:
        pass
    return text
  if field_type is str:
    return text
  raise ConfigError(None, f"--grid {key}: fields of type {field_type.__name__} cannot be "
                   "swept from the command line.")


def parse_grid(specs: Sequence[str], config: ml_collections.ConfigDict) -> list[Point]:
  """Parses ``--grid key=v1,v2,...`` flags into the cartesian product of points.

  Args:
    specs: e.g. ``["divergence=kl,js", "temperature.init=1,4,8"]``. Keys are config
      fields, nested with dots. Values are comma-separated (commas inside brackets
      belong to a tuple value) and typed like the field: int, float, str, bool
      (true/false/1/0), tuple/list as a Python literal; a group with an ``init`` key
      (a schedule) takes a number, meaning the constant schedule at that value.
    config: the base config; fixes the valid keys and the value types.

  Returns:
    One ``{key: value}`` dict per point, keys in flag order; the last flag varies
    fastest. No specs gives the single empty point (just the base config).

  Raises:
    ValueError: malformed spec, unknown key (naming it and the valid keys at that
      level), a value of the wrong type, a key given twice or overlapping another
      (``temperature`` and ``temperature.init``), or a value repeated within a key.

  Example:
    >>> from kd_jax.config import base_config
    >>> parse_grid(["divergence=kl,js", "temperature.init=1,4"], base_config())
    [{'divergence': 'kl', 'temperature.init': 1.0}, {'divergence': 'kl',
     'temperature.init': 4.0}, {'divergence': 'js', 'temperature.init': 1.0},
     {'divergence': 'js', 'temperature.init': 4.0}]
  """
  axes: dict[str, list[Any]] = {}
  for spec in specs:
    key, sep, text = spec.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
      raise ConfigError(None, f"--grid {spec!r}: expected key=value1,value2,... .")
    for other in axes:
      if key == other or key.startswith(other + ".") or other.startswith(key + "."):
        raise ConfigError(None, f"--grid key {key!r} given twice (or overlapping {other!r}); "
                         "list all its values in one flag: key=v1,v2.")
    current, field_type = _resolve(config, key)
    texts = _split_values(text)
    if "" in texts:
      raise ConfigError(None, f"--grid {spec!r}: empty value (a stray comma?).")
    values = [_parse_value(key, t, current, field_type) for t in texts]
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
      raise ConfigError(None, f"--grid {key}: value(s) {', '.join(repeated)} given twice.")
    axes[key] = values
  return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def parse_points(specs: Sequence[str], config: ml_collections.ConfigDict) -> list[NamedPoint]:
  """Parses named points ``"name: key=value; key=value"`` (``--point`` / ``config.sweep.points``).

  A study whose rows are not a cartesian product (the R1 table: ``sft`` is
  ``method=none``, ``seqkd`` is ``method=none; student_data=transfer``, ...) lists
  its points one by one. Values are typed as in `parse_grid`, one value per key.

  Returns:
    ``(name, {key: value})`` per spec, in order.

  Raises:
    ConfigError: a spec without a name, a name that is not a plain directory name or
      is given twice, a malformed ``key=value``, an unknown key or a mistyped value.

  Example:
    >>> from kd_jax.config import base_config
    >>> parse_points(["kd-js: divergence=js; alpha=0"], base_config())
    [('kd-js', {'divergence': 'js', 'alpha': 0.0})]
  """
  named: list[NamedPoint] = []
  for spec in specs:
    name, sep, body = spec.partition(":")
    name = name.strip()
    if not sep or not name or _SLUG_SAFE.search(name):
      raise ConfigError(None, f"--point {spec!r}: expected 'name: key=value; key=value' with a "
                        "name of letters, digits and ._+- (it names the run directory).")
    if name in (n for n, _ in named):
      raise ConfigError(None, f"--point name {name!r} given twice.")
    point: Point = {}
    for item in filter(None, (part.strip() for part in body.split(";"))):
      key, eq, text = item.partition("=")
      key, text = key.strip(), text.strip()
      if not eq or not key or not text:
        raise ConfigError(None, f"--point {name}: expected key=value, got {item!r}.")
      if key in point:
        raise ConfigError(None, f"--point {name}: key {key!r} given twice.")
      current, field_type = _resolve(config, key, f"--point {name}:")
      point[key] = _parse_value(key, text, current, field_type)
    named.append((name, point))
  return named


def combine(named: Sequence[NamedPoint], points: Sequence[Point]) -> list[NamedPoint]:
  """Every named point with every grid point (``name,<grid slug>``); no names: the grid alone.

  Raises:
    ConfigError: a named point and the grid set the same key.
  """
  if not named:
    return [(None, point) for point in points]
  out = []
  for name, fixed in named:
    for point in points:
      overlap = sorted(set(fixed) & set(point))
      if overlap:
        raise ConfigError(None, f"--point {name} and --grid both set {', '.join(overlap)}.")
      out.append((f"{name},{slugify(point)}" if point else name, {**fixed, **point}))
  return out


def apply_point(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the point's overrides (see `parse_grid` for shorthands)."""
  config = copy.deepcopy(config)
  for key, value in point.items():
    *parents, name = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if isinstance(node[name], ml_collections.ConfigDict):
      if "schedule" in node[name]:
        node[name].schedule = "constant"
      node[name].init = value
    else:
      node[name] = value
  return config


def _format_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):  # (16, 32) -> 16_32: no brackets in paths.
    return "_".join(map(stats.format_value, value))
  return stats.format_value(value)


def slugify(point: Point) -> str:
  """A readable, filesystem-safe directory name for a point.

  ``{"divergence": "js", "temperature.init": 4.0}`` -> ``divergence=js,temperature.init=4``.
  Characters outside ``[A-Za-z0-9._+-]`` in values are %-escaped; overlong names are
  cut and given a hash suffix; the empty point is ``base``.
  """
  if not point:
    return "base"
  slug = ",".join(
      f"{key}={_SLUG_SAFE.sub(lambda m: f'%{ord(m.group()):02X}', _format_value(value))}"
      for key, value in point.items())
  if len(slug) > _MAX_SLUG:
    slug = slug[:_MAX_SLUG - 11] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:10]
  return slug
