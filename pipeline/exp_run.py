"""`dvc exp run -S` for any parameter: `python -m pipeline exp-run -S [FILE:]KEY=VALUE ... [-n NAME] [dvc args]`.

Plain `dvc exp run -S` works for parameters that leave the set of runs alone (a table's `report_epoch`),
but not for one that defines runs (MDR's lambda, the epochs): a run's id ends with the hash of its
config, so such a change adds and removes stages in dvc.yaml, and DVC reads dvc.yaml before it applies
-S. (Its `grid` stage then stops the experiment with "dvc.yaml is out of date".) This command does the
three steps in the order that works:

1. apply each -S to its params file with DVC's own code (the same Hydra override syntax as
   `dvc exp run -S`: `key.sub=value`, `+key=value` adds, `~key` removes; list items by index);
2. check that params/ still expand to a valid grid and regenerate dvc.yaml (`pipeline dvc-yaml`);
3. run `dvc exp run` with the other arguments (`-n NAME`, `--queue`, `--temp`, `-f`, ...), which
   records the changed params files and dvc.yaml in the experiment.

FILE defaults to the profile's file, params/profiles/<profile>.yaml. A -S that fails (unknown key, bad
value, an invalid grid) changes nothing. With --queue or --temp the workspace is put back as it was,
since the experiment keeps its own copy; in the workspace (the default) the changes stay, as with
`dvc exp run -S`.

Example: MDR's lambda in the smoke profile (its first override):
    python -m pipeline exp-run -S overrides.0.set.regularizer.params.weight=0.3 -n lambda-0.3
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from pipeline.common import parser, stage

DETACHED = ("--queue", "--temp")  # the experiment runs from a copy of the repository, not in the workspace


def split_set(spec: str, default_file: Path) -> tuple[Path, str]:
    """'file.yaml:key=value' -> (file.yaml, 'key=value'); no file part -> the default file. The key part
    may hold ':' itself (a value like 'a:b'), so only a prefix ending in .yaml/.yml/.json/.toml is a file."""
    from mdr.config import ConfigError

    head, sep, tail = spec.partition(":")
    if sep and Path(head).suffix.lower() in (".yaml", ".yml", ".json", ".toml"):
        path, override = Path(head), tail
    else:
        path, override = default_file, spec
    if "=" not in override and not override.startswith("~"):
        raise ConfigError(f"-S {spec!r}: expected [FILE:]KEY=VALUE (e.g. "
                          "params/profiles/smoke.yaml:train.epochs=3), or ~KEY to remove a key")
    if not path.is_file():
        raise ConfigError(f"-S {spec!r}: params file {path} does not exist (paths are relative to the "
                          "repository root, e.g. params/methods.yaml)")
    return path, override


def apply_sets(sets: list[tuple[Path, str]]) -> dict[Path, str]:
    """Apply the overrides file by file; returns each touched file's previous text. On any failure every
    file is restored and a ConfigError names the override and DVC's (Hydra's) reason."""
    from dvc.utils.hydra import apply_overrides

    from mdr.config import ConfigError

    by_file: dict[Path, list[str]] = defaultdict(list)
    for path, override in sets:
        by_file[path].append(override)
    saved = {path: path.read_text() for path in by_file}
    try:
        for path, overrides in by_file.items():
            try:
                apply_overrides(path, overrides)
            except Exception as e:  # DVC wraps Hydra's reason ("Could not override 'x'...") in a generic error
                reason = e.__cause__ or e
                raise ConfigError(f"-S {', '.join(overrides)} on {path}: {reason}".rstrip()
                                  + "\n  a new key needs a leading '+' (+key=value); list items are addressed "
                                  "by index (overrides.0.set...)") from None
    except BaseException:
        restore(saved)
        raise
    return saved


def restore(saved: dict[Path, str]) -> None:
    from mdr.io import atomic_write_text

    for path, text in saved.items():
        atomic_write_text(path, text)


def regenerate(profile: str, dvc_yaml: Path) -> tuple[str | None, int]:
    """Write dvc.yaml for params/ as they are now; returns (its previous text, number of stages that changed)."""
    from mdr.io import atomic_write_text
    from pipeline.dvc_yaml import render, stage_names

    previous = dvc_yaml.read_text() if dvc_yaml.exists() else None
    wanted = render(profile, root=dvc_yaml.parent)  # raises ConfigError when params/ no longer expand
    if wanted != previous:
        atomic_write_text(dvc_yaml, wanted)
    changed = len(stage_names(wanted) ^ stage_names(previous or ""))
    return previous, changed


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="[FILE:]KEY=VALUE",
                   help="a parameter to change, in `dvc exp run -S` syntax; FILE defaults to "
                        "params/profiles/<profile>.yaml; repeat for several")
    p.add_argument("--dvc", default=f"{shlex.quote(sys.executable)} -m dvc", help="the dvc command (default: this Python's)")
    args, dvc_args = p.parse_known_args(argv)
    from mdr.config import ConfigError
    from mdr.grid import PARAMS_DIR

    profile_file = Path(PARAMS_DIR) / "profiles" / f"{args.profile}.yaml"
    dvc_yaml = Path("dvc.yaml")
    if not dvc_yaml.exists():
        raise ConfigError("no dvc.yaml in the current folder: run this from the repository root")
    sets = [split_set(s, profile_file) for s in args.sets]
    saved = apply_sets(sets)
    try:
        previous, changed = regenerate(args.profile, dvc_yaml)
    except ConfigError as e:
        restore(saved)
        raise ConfigError(f"after -S {' '.join(args.sets)}, params/ no longer give a valid grid, so nothing was "
                          f"changed:\n  {e}") from None
    except BaseException:
        restore(saved)
        raise
    for path, override in sets:
        print(f"set {override} in {path}")
    print(f"dvc.yaml regenerated: {changed} stage(s) added or removed" if changed else "dvc.yaml unchanged")
    command = shlex.split(args.dvc) + ["exp", "run", *dvc_args]
    print("running:", " ".join(command), flush=True)
    code = subprocess.call(command)
    if any(a in DETACHED for a in dvc_args):  # the queued/temporary experiment has its own copy
        restore(saved if previous is None else {**saved, dvc_yaml: previous})
    return code
