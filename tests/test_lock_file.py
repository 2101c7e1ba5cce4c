"""The lock file `make install` installs (issue 26): it pins every requirement of the unpinned
requirements.txt at a version that satisfies it (a requirement added without `make lock`
fails here, not on a fresh machine)."""

import os

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(name):
  with open(os.path.join(REPO, name)) as f:
    return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


def test_the_lock_pins_every_requirement_at_a_version_that_satisfies_it():
  pins = {}
  for line in _lines("requirements.lock"):
    name, _, version = line.partition("==")
    assert version, f"not an exact pin: {line!r}"
    pins[canonicalize_name(Requirement(name).name)] = version
  checked = 0
  for line in _lines("requirements.txt"):
    requirement = Requirement(line)
    if requirement.marker is not None and not requirement.marker.evaluate():
      continue
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement.name} is in requirements.txt but not pinned: make lock"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"{requirement.name}=={pins[name]} does not satisfy {line!r}: make lock")
    checked += 1
  assert checked > 20
